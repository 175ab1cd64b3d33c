"""Local sweep workers and CPU threads: the same small kvbench-tiny grid through `kvbench sweep --executor local`,
once with every worker at torch's default (a thread per core: OMP_NUM_THREADS set to the core count, which is what
the launcher did before it shared the cores out) and once as the launcher now starts them (the cores shared out,
one thread each on a 2-core machine). Interleaved, `--repeats` times each; wall time of the whole `kvbench sweep`
call (start-up, model loads, cells). The two runs' scores are compared too: thread count must not change answers.

Run from the repository root with kvbench installed (`bash scripts/dev.sh` does it), on a quiet machine:

    .venv/bin/python benchmarks/sweep_threads.py [--workers 2] [--samples 20] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from kvbench.launch import cpu_cores

ROOT = Path(__file__).resolve().parent.parent
KVBENCH = ROOT / ".venv" / "bin" / "kvbench"
TASKS = ["kvbench_synth_recall", "kvbench_synth_rag"]


def write_grid(path: Path, samples: int) -> Path:
    """Two values x two tasks of patched SnapKV on the bundled model: four cells, two per worker."""
    path.write_text(
        json.dumps(
            {
                "models": ["kvbench-tiny"],
                "methods": [
                    {
                        "name": "snapkv",
                        "params": {"schedule": "patched", "recent": 16, "obs_window": 16},
                        "knob": "keep",
                        "values": [0.1, 0.3],
                    }
                ],
                "tasks": TASKS,
                "context_lengths": [1024],
                "chunk_sizes": [256],
                "metadata": {"num_samples": samples},
                "model_args": {"device": "cpu"},
            }
        )
    )
    return path


def run_sweep(grid: Path, out: Path, workers: int, omp: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    start = time.perf_counter()
    done = subprocess.run(
        [str(KVBENCH), "sweep", str(grid), "--out", str(out), "--executor", "local", "--workers", str(workers)],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"kvbench sweep failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds


def scores(out: Path) -> dict[str, object]:
    """Each cell's scores and footprints (not its timings), keyed by its folder name (the same in both runs: a cell's
    name is its settings)."""
    found = {}
    for results in sorted(out.glob("*/results.json")):
        for task, metrics in json.loads(results.read_text())["results"].items():
            kept = {k: v for k, v in metrics.items() if k.startswith(("score,", "kv_footprint,"))}
            found[f"{results.parent.name}/{task}"] = kept
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    cores = cpu_cores()
    modes = {"torch default (a thread per core each)": str(cores), "shared out (launcher's default)": None}
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    answers: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        grid = write_grid(Path(tmp) / "grid.json", args.samples)
        for repeat in range(args.repeats):
            for mode, omp in modes.items():
                out = Path(tmp) / f"out-{repeat}-{omp or 'shared'}"
                times[mode].append(run_sweep(grid, out, args.workers, omp))
                answers[mode] = scores(out)
                print(f"{mode}: {times[mode][-1]:.1f} s", flush=True)
    baseline, shared = (statistics.median(times[mode]) for mode in modes)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {cores} cores",
        "workers": args.workers,
        "cells": len(next(iter(answers.values()))),
        "samples_per_cell": args.samples,
        "seconds": times,
        "median_default_s": round(baseline, 1),
        "median_shared_s": round(shared, 1),
        "shared_over_default": round(shared / baseline, 3),
        "same_scores": len({json.dumps(a, sort_keys=True) for a in answers.values()}) == 1,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
