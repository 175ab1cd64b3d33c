"""`kvbench demo`: a small sweep on the bundled tiny model, offline, scored into a critical-KV-footprint table.

The sweep is an ordinary `kvbench sweep` config (written to OUT/sweep.yaml, results under OUT/results/, so an
interrupted demo resumes where it stopped), and the table and plot are `kvbench leaderboard`'s: the demo is
the whole pipeline in minutes, with methods x budgets x the four synthetic categories at 1K tokens.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kvbench import tiny
from kvbench.settings import DEFAULT_THRESHOLD

TASKS = ["kvbench_synth_recall", "kvbench_synth_rag", "kvbench_synth_rerank", "kvbench_synth_icl"]
HEADS = {"sink": tiny.PATTERN_SINK, "window": tiny.PATTERN_WINDOW, "pattern": tiny.NAME}
SCORING = {"recent": 16, "obs_window": 16}  # the tiny model's facts are a few tokens long
# (name, fixed params, knob values): the baseline, a recency method, SnapKV's two chunked schedules (the paper's
# naive one and the patched one), PyramidKV, and the two head-pattern methods with the patterns trained for it.
METHODS = [
    ("full", {}, None),
    ("streamingllm", {"sink": 4}, [32, 128, 512]),
    ("snapkv", {"schedule": "chunked", **SCORING}, [0.02, 0.1, 0.3]),
    ("snapkv", {"schedule": "patched", **SCORING}, [0.02, 0.1, 0.3]),
    ("pyramidkv", {"schedule": "patched", **SCORING}, [0.02, 0.1, 0.3]),
    ("duoattention", HEADS, [0.25, 0.5, 0.75]),
    ("prulong", HEADS, [0.25, 0.5, 0.75]),
]
QUICK_METHODS = [
    ("full", {}, None),
    ("streamingllm", {"sink": 4}, [32]),
    ("snapkv", {"schedule": "patched", **SCORING}, [0.05]),
    ("prulong", HEADS, [0.5]),
]


def config(samples: int = 5, length: int = 1024, chunk_size: int = 256, quick: bool = False, tasks=TASKS) -> dict:
    methods = []
    for name, params, values in QUICK_METHODS if quick else METHODS:
        entry = {"name": name, "params": dict(params)}
        if values:
            entry["values"] = values
        methods.append(entry)
    return {
        "models": [tiny.NAME],
        "methods": methods,
        "tasks": list(tasks),
        "context_lengths": [length],
        "chunk_sizes": [chunk_size],
        "metadata": {"num_samples": samples},
        "model_args": {"device": "cpu"},
    }


# What a demo costs, measured 2026-12-02 on a quiet 2-core CPU (AMD EPYC VM, torch 2.13 CPU): the full demo, 76 cells
# of 5 prompts at 1K tokens, took 3 min 52 s; the quick one, 16 cells of 1 prompt, 32 s. Seconds: loading once,
# per cell (lm-eval builds the task), per prompt of 1K tokens.
SECONDS_TO_START, SECONDS_PER_CELL, SECONDS_PER_1K_PROMPT = 15.0, 0.8, 0.45


def estimate_seconds(cells: int, samples: int, length: int) -> float:
    return SECONDS_TO_START + cells * (SECONDS_PER_CELL + SECONDS_PER_1K_PROMPT * samples * length / 1024)


def run(
    out,
    samples: int = 5,
    length: int = 1024,
    chunk_size: int = 256,
    quick: bool = False,
    tasks=TASKS,
    threshold: float = DEFAULT_THRESHOLD,
    print_fn=print,
) -> str:
    """Run (or resume) the demo sweep under `out`; write leaderboard.md and leaderboard.png; return the table.
    It says first how many cells it will run and about how long that takes, so a slow machine is no surprise."""
    from kvbench import leaderboard, scoring, sweep

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grid = config(samples, length, chunk_size, quick, tasks)
    config_path = out / "sweep.yaml"
    config_path.write_text(yaml.safe_dump(grid, sort_keys=False))
    todo = [cell for cell in sweep.cells(grid) if not sweep.is_done(cell, out / "results")]
    minutes = estimate_seconds(len(todo), samples, length) / 60 if todo else 0
    print_fn(
        f"demo: {len(todo)} cells to run ({len(sweep.cells(grid))} in all: method settings x {len(tasks)} tasks), "
        f"{samples} prompt(s) each at {length} tokens; about {max(minutes, 0.5):.1f} min on a quiet 2-core CPU "
        "(measured), longer on a busy one. Interrupted, it resumes where it stopped."
    )
    sweep.run_sweep(config_path, out / "results", print_fn=print_fn)
    # Score this config's cells only: OUT/results may also hold an earlier demo's (say, --quick) cells.
    runs = scoring.load_runs([cell.folder(out / "results") / "results.json" for cell in sweep.cells(grid)])
    boards = scoring.score_runs(runs, threshold)
    table = leaderboard.render(boards, "md", threshold)
    (out / "leaderboard.md").write_text(table)
    leaderboard.plot(boards, out / "leaderboard.png", threshold)
    return table
