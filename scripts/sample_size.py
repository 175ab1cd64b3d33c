"""How wide are the critical footprint's intervals at n samples per task? Measured on a sweep by subsampling it.

    python scripts/sample_size.py sweeps/kvbench-tiny --sizes 25,50,100 --draws 5

For each size n, each draw keeps the same n resampling units (documents; shared contexts in multi-question tasks)
of every task in every run, so the draw is a smaller sweep of the same kind, re-scored exactly as `kvbench
leaderboard` scores (task score and footprint: the kept samples' means). It prints, per n, the median width of
the closed 95% intervals over every (category, query mode, method) and draw, their interquartile range, and how
many intervals stayed open at an end (the curve crossed outside the footprints tried, or not at all). Widths shrink
about as 1/sqrt(n) where a curve is smooth near the threshold; where it is steep or has a gap, less.

Reported in DESIGN.md and README ("Statistics"), with the date and the sweep it was measured on.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings

import numpy as np

from kvbench import scoring, statistics


def subsample(runs: list[scoring.Run], size: int, rng: np.random.Generator) -> list[scoring.Run]:
    """The runs with only `size` units of each task kept (the same units in every run: a paired draw). A task
    with `size` units or fewer keeps them all; a task without per-sample results is refused."""
    keep: dict[str, set] = {}
    for run in runs:
        for result in run.tasks:
            if result.samples is None:
                raise ValueError(f"{run.path}: task {result.task!r} has no per-sample results ({result.no_samples})")
            if result.task not in keep:
                units = np.unique(result.samples.units)
                keep[result.task] = set(rng.choice(units, min(size, len(units)), replace=False).tolist())
    smaller = []
    for run in runs:
        tasks = []
        for result in run.tasks:
            samples = result.samples
            mask = np.isin(samples.units, list(keep[result.task]))
            kept = scoring.Samples(
                samples.doc_ids[mask],
                samples.units[mask],
                samples.scores[mask],
                None if samples.footprints is None else samples.footprints[mask],
            )
            footprint = result.footprint if kept.footprints is None else float(kept.footprints.mean())
            tasks.append(
                dataclasses.replace(
                    result, score=float(kept.scores.mean()), footprint=footprint, n=int(mask.sum()), samples=kept
                )
            )
        smaller.append(dataclasses.replace(run, tasks=tasks))
    return smaller


def widths(runs: list[scoring.Run], replicates: int, seed: int) -> tuple[list[float], int]:
    """Closed interval widths (fractions of full attention's footprint) and the count of intervals open at an end."""
    closed, open_ = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scoring.ResultFileWarning)
        boards = scoring.score_runs(runs, replicates=replicates, seed=seed)
    for board in boards:
        for category in board.categories.values():
            for interval in category.interval.values():
                if interval.open_low is None or interval.open_high is None:
                    open_ += 1
                else:
                    closed.append(interval.high - interval.low)
    return closed, open_


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", nargs="+", help="sweep folders or result files")
    parser.add_argument("--sizes", default="25,50,100", help="samples (units) per task, comma-separated")
    parser.add_argument("--draws", type=int, default=5, help="subsamples per size (one where n is every unit)")
    parser.add_argument("--bootstrap", type=int, default=statistics.DEFAULT_REPLICATES)
    parser.add_argument("--seed", type=int, default=statistics.DEFAULT_SEED)
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scoring.ResultFileWarning)
        runs = scoring.load_runs(args.sweep)
    most = max(r.samples.units.size and len(np.unique(r.samples.units)) for run in runs for r in run.tasks if r.samples)
    rng = np.random.default_rng(args.seed)
    print("| n per task | draws | median width | interquartile range | open intervals |")
    print("|---|---|---|---|---|")
    for size in sorted(int(s) for s in args.sizes.split(",")):
        draws = 1 if size >= most else args.draws
        closed, opened, total = [], 0, 0
        for _ in range(draws):
            found, open_ = widths(subsample(runs, size, rng), args.bootstrap, args.seed)
            closed += found
            opened += open_
            total += len(found) + open_
        low, mid, high = (100 * np.percentile(closed, q) for q in (25, 50, 75)) if closed else (np.nan,) * 3
        print(f"| {min(size, most)} | {draws} | {mid:.1f} points | {low:.1f}–{high:.1f} | {opened} of {total} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
