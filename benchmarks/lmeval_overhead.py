"""lm-eval overhead: the same tasks and model through lm-eval's `hf` backend and `kvbench` (method=full),
and the interpreter start-up time the `.pth` hook adds.

A random-weight Llama of a few layers saved locally (byte-level BPE tokenizer from tests/checkpoints.py),
the backend tests' tasks (tests/data/lmeval_tasks) with prompts of >= 4K tokens, one sequence at a time.
Both backends are built once; each timing is one `lm_eval.simple_evaluate` call (requests, task
building, metrics), interleaved hf / kvbench, median of repeats. Run from the repository root with
kvbench installed (`bash scripts/dev.sh` does it):

    .venv/bin/python benchmarks/lmeval_overhead.py [--words 3400] [--docs 2] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tests" / "data" / "lmeval_tasks"
sys.path.insert(0, str(ROOT / "tests"))


def save_model(directory: Path) -> Path:
    import torch
    from checkpoints import build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def evaluation_times(model_dir: Path, args) -> list[dict]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from kvbench.lmeval.backend import KVBenchLM

    backends = {
        "hf": HFLM(pretrained=str(model_dir), device="cpu", batch_size=1),
        "kvbench_full": KVBenchLM(pretrained=str(model_dir), method="full", device="cpu"),
    }
    manager = TaskManager(
        include_defaults=False, include_path=str(TASKS), metadata={"words": args.words, "docs": args.docs}
    )
    rows = []
    for task in args.tasks:
        times = {name: [] for name in backends}
        answers = {}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for name, lm in backends.items():
                start = time.perf_counter()
                out = lm_eval.simple_evaluate(
                    model=lm, tasks=[task], task_manager=manager, limit=args.docs, log_samples=True, bootstrap_iters=0
                )
                if repeat:
                    times[name].append(time.perf_counter() - start)
                answers[name] = [s["resps"] for s in out["samples"][task]]
        tokens = backends["kvbench_full"].get_model_info()["kvbench"]["tasks"][task]["tokens"]
        median = {name: statistics.median(values) for name, values in times.items()}
        row = {
            "task": task,
            "tokens_per_request": round(tokens),
            **{f"{name}_s": round(value, 3) for name, value in median.items()},
            "kvbench_vs_hf": round(median["kvbench_full"] / median["hf"], 3),
            "same_answers": _same(answers["hf"], answers["kvbench_full"]),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _same(ours, theirs) -> bool:
    flat = lambda resps: [x for r in resps for x in (r[0] if isinstance(r[0], list) else r)]  # noqa: E731
    return all(
        abs(float(a[0]) - float(b[0])) < 1e-3 if isinstance(a, (list, tuple)) else a == b
        for a, b in zip(flat(ours), flat(theirs), strict=True)
    )


def startup_times(runs: int) -> dict:
    """`python -c pass` with the installed hook vs the same with an empty stand-in module shadowing it
    (PYTHONPATH comes before site-packages), so the difference is the hook's own work. Both runs get one
    PYTHONPATH folder (an empty one for the hook), as each sys.path entry costs start-up time too."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as stub, tempfile.TemporaryDirectory() as empty:
        Path(stub, "kvbench_lmeval_hook.py").write_text("")
        walls = {"hook": [], "stub": []}
        pair = [("hook", {"PYTHONPATH": empty}), ("stub", {"PYTHONPATH": stub})]
        for run in range(runs):
            for name, extra in pair if run % 2 else pair[::-1]:  # alternate which goes first
                start = time.perf_counter()
                subprocess.run([sys.executable, "-c", "pass"], env={**env, **extra}, check=True)
                walls[name].append(time.perf_counter() - start)
    imports = []
    for _ in range(runs):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "pass"], env=env, capture_output=True, text=True
        ).stderr
        found = re.search(r"\|\s*(\d+) \|\s*kvbench_lmeval_hook$", err, re.M)
        imports.append(int(found.group(1)) if found else None)
    if None in imports:
        raise SystemExit("kvbench_lmeval_hook is not imported at start-up: is kvbench installed (non-editable)?")
    hook, stub = statistics.median(walls["hook"]) * 1e3, statistics.median(walls["stub"]) * 1e3
    return {
        "runs": runs,
        "python_c_pass_ms_with_hook": round(hook, 2),
        "python_c_pass_ms_with_empty_stub": round(stub, 2),
        "added_ms_wall": round(hook - stub, 2),
        "hook_import_ms_importtime": round(statistics.median(imports) / 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words", type=int, default=3400, help="filler words per prompt (3400 ~ 4.2K tokens)")
    parser.add_argument("--docs", type=int, default=2, help="documents per task (--limit)")
    parser.add_argument("--tasks", nargs="+", default=["kvbench_test_recall", "kvbench_test_choice_words"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--startup-runs", type=int, default=30)
    parser.add_argument("--startup-only", action="store_true", help="only the start-up figures")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    startup = startup_times(args.startup_runs)
    print(json.dumps(startup), flush=True)
    if args.startup_only:
        return
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as directory:
        rows = evaluation_times(save_model(Path(directory)), args)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "model": "random Llama, 4 layers, hidden 512, 8 query / 2 KV heads, fp32, CPU",
        "startup": startup,
        "evaluation": rows,
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
