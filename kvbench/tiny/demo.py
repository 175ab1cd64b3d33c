"""`kvbench demo`: a small offline sweep on the bundled tiny model, printed as a footprint/score table.

Methods x budgets x the four synthetic categories, every request through kvbench.generate with chunked
prefill, the footprint measured from the cache that ran. The full sweep and the critical-footprint
leaderboard are `kvbench sweep` / `kvbench leaderboard`; this is the minutes-long tour.
"""

from __future__ import annotations

from pathlib import Path

from kvbench.tiny import evaluate

# (method, parameters): the baseline, a recency method at two windows, SnapKV's two chunked schedules
# (the paper's "naive" chunked one and the patched one) and PyramidKV.
RUNS = [
    ("full", {}),
    ("streamingllm", {"sink": 4, "window": 128}),
    ("streamingllm", {"sink": 4, "window": 512}),
    ("snapkv", {"keep": 0.05, "schedule": "chunked"}),
    ("snapkv", {"keep": 0.05, "schedule": "patched"}),
    ("snapkv", {"keep": 0.25, "schedule": "patched"}),
    ("pyramidkv", {"keep": 0.05, "schedule": "patched"}),
]
CATEGORIES = {"synth_recall": "recall", "synth_rag": "rag", "synth_rerank": "rerank", "synth_icl": "icl"}


def run(length: int = 1024, samples: int = 3, chunk_size: int = 256, tasks=tuple(CATEGORIES), out: Path | None = None,
        progress=True) -> tuple[list[dict], str]:
    import kvbench
    from kvbench import tiny

    model, tokenizer = tiny.load()
    prompts = {task: evaluate.samples(task, tokenizer, length, samples) for task in tasks}  # the same for every method
    rows = []
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        job = bar.add_task("kvbench demo", total=len(RUNS) * len(tasks))
        for name, params in RUNS:
            row = {"method": name, "params": " ".join(f"{k}={v}" for k, v in params.items()), "tasks": {}}
            for task in tasks:
                bar.update(job, description=f"{name} {row['params']} {task}")
                result = evaluate.evaluate(model, tokenizer, task, lambda: kvbench.load_method(name, **params),
                                           chunk_size=chunk_size, prompts=prompts[task])
                row["tasks"][task] = result
                bar.advance(job)
            rows.append(row)
    table = markdown(rows, tasks, length, samples, chunk_size)
    if out is not None:
        Path(out).write_text(table)
    return rows, table


def markdown(rows, tasks, length, samples, chunk_size) -> str:
    head = "| method | parameters | " + " | ".join(f"{CATEGORIES[t]} score (footprint)" for t in tasks) + " |"
    lines = [f"kvbench-tiny, context {length} tokens, chunk {chunk_size}, {samples} samples per task", "", head,
             "|" + "---|" * (len(tasks) + 2)]
    for row in rows:
        cells = [f"{row['tasks'][t].score:.2f} ({row['tasks'][t].kv_footprint:.2f})" for t in tasks]
        lines.append(f"| {row['method']} | {row['params'] or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
