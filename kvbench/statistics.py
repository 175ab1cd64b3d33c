"""How sure a critical KV footprint is: a paired bootstrap over samples, stratified by task (DESIGN.md, "Statistics").

A category's point for a setting is the mean over its tasks of the mean over each task's samples. One bootstrap
replicate draws, within every task, as many independent units as the task has (a document; the shared context of a
multi-question task, with all its questions) with replacement, and uses that same draw for every setting of every
method and for the `full` baseline: the comparison is paired, and the baseline's own noise moves the threshold.
In each replicate every curve's critical footprint is found exactly as for the point estimate (piecewise-linear,
`crossings`); the interval is the percentile interval of those replicates, an end open where replicates fall below
the smallest or above the largest footprint tried. Pairs of curves are compared replicate by replicate, and a rank is
the range of places a method is not separated from at the chosen level.

Everything is numpy over all replicates at once: a paper-sized sweep scores in seconds.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

NORMAL = NormalDist()
DEFAULT_LEVEL = 0.95
DEFAULT_REPLICATES = 2000
DEFAULT_SEED = 0
GRID = 2.0**20  # per-sample values are rounded to 1/GRID (see TaskSamples)


# ---- critical footprints over many curves at once ----


@dataclass(frozen=True)
class Crossings:
    """Critical footprints of one curve in many replicates, [R] each.

    `value`: the crossing, -inf where even the smallest footprint passes ("<") and +inf where the largest falls
    short (">"). For comparisons each replicate is the interval the curve's critical footprint is known to lie in:
    [`low`, `high`] = [value, value] at a crossing, [-inf, smallest footprint] for "<", [largest, +inf] for ">".
    `segment` (the index of the last failing point, sorted by footprint: -1 for "<", K-1 for ">") and `t` (where
    between it and the next point the crossing lies) let a caller interpolate other figures (peaks) the same way.
    """

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    segment: np.ndarray
    t: np.ndarray
    order: np.ndarray  # [R, K]: the points sorted by footprint in each replicate

    @property
    def marks(self) -> np.ndarray:
        return np.where(np.isneginf(self.value), "<", np.where(np.isposinf(self.value), ">", ""))


def crossings(footprints: np.ndarray, scores: np.ndarray, target: np.ndarray) -> Crossings:
    """footprints, scores [R, K] (K points of one curve, any order), target [R]: in each replicate, the smallest
    footprint from which the piecewise-linear curve through the points, sorted by footprint, stays >= target."""
    footprints, scores = np.atleast_2d(footprints), np.atleast_2d(scores)
    target = np.broadcast_to(np.asarray(target, dtype=float), footprints.shape[:1])
    order = np.argsort(footprints, axis=1, kind="stable")
    xs, ys = np.take_along_axis(footprints, order, 1), np.take_along_axis(scores, order, 1)
    count = xs.shape[1]
    failing = ys < target[:, None]
    # The last point that falls short (-1: none does); the curve crosses between it and the next.
    segment = np.where(failing.any(axis=1), count - 1 - np.argmax(failing[:, ::-1], axis=1), -1)
    a = np.clip(segment, 0, count - 1)
    b = np.clip(segment + 1, 0, count - 1)
    take = lambda m, i: np.take_along_axis(m, i[:, None], 1)[:, 0]  # noqa: E731 - one column per replicate
    xa, xb, ya, yb = take(xs, a), take(xs, b), take(ys, a), take(ys, b)
    inside = (segment >= 0) & (segment < count - 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # ya < target <= yb inside, so yb > ya there
        t = np.where(inside, (target - ya) / np.where(inside, yb - ya, 1.0), 0.0)
    value = np.where(inside, xa + t * (xb - xa), np.where(segment < 0, -np.inf, np.inf))
    low = np.where(segment < 0, -np.inf, np.where(segment == count - 1, xs[:, -1], value))
    high = np.where(segment < 0, xs[:, 0], np.where(segment == count - 1, np.inf, value))
    return Crossings(value, low, high, segment, t, order)


# ---- resampling ----


@dataclass(frozen=True)
class TaskSamples:
    """One task's per-sample figures for the settings of one category, aligned by document.

    `units` [D]: the resampling unit of each document (0..num_units-1); `scores` / `footprints`: [S, D], one row per
    setting (the columns of `settings` in the caller's order)."""

    units: np.ndarray
    num_units: int
    scores: np.ndarray
    footprints: np.ndarray

    def __post_init__(self) -> None:
        # Values on a grid of 2^-20 (a millionth): every weighted sum of them is then exact in float64, whatever the
        # order the BLAS of this machine sums in, so the same files give the same intervals on any CPU.
        for name in ("scores", "footprints"):
            object.__setattr__(self, name, np.round(np.asarray(getattr(self, name), dtype=float) * GRID) / GRID)


def category_seed(seed: int, *names) -> np.random.SeedSequence:
    """The same replicates for a category whatever else is scored beside it (and on any machine)."""
    return np.random.SeedSequence([seed, zlib.crc32("\x1f".join(map(str, names)).encode())])


def sample_means(tasks: list[TaskSamples]):
    """The category means themselves, [1, S] scores and footprints (every document once)."""
    scores = np.mean([task.scores.mean(axis=1) for task in tasks], axis=0)
    footprints = np.mean([task.footprints.mean(axis=1) for task in tasks], axis=0)
    return scores[None], footprints[None]


def jackknife_means(tasks: list[TaskSamples]):
    """Category means with one unit left out, each unit of each task in turn: [J, S] scores and footprints, and
    the task (stratum) of each row, [J]; J is the number of units over all tasks. For the BCa acceleration."""
    full_scores, full_footprints = sample_means(tasks)
    rows_scores, rows_footprints, strata = [], [], []
    for index, task in enumerate(tasks):
        per_unit = np.bincount(task.units, minlength=task.num_units).astype(float)  # documents per unit
        for values, full, out in (
            (task.scores, full_scores, rows_scores),
            (task.footprints, full_footprints, rows_footprints),
        ):
            unit_sums = np.stack([np.bincount(task.units, weights=row, minlength=task.num_units) for row in values])
            left_out = (values.sum(axis=1, keepdims=True) - unit_sums) / (len(task.units) - per_unit)  # [S, U]
            out.append(full + (left_out.T - values.mean(axis=1)) / len(tasks))
        strata.append(np.full(task.num_units, index))
    return np.concatenate(rows_scores), np.concatenate(rows_footprints), np.concatenate(strata)


def resample_means(tasks: list[TaskSamples], replicates: int, rng: np.random.Generator):
    """Category means per replicate, [R, S] scores and footprints: the mean over tasks of each task's weighted mean
    over its documents, a document weighing as often as its unit was drawn. Row 0 of the draw is not special:
    every row is a replicate."""
    score_sum = footprint_sum = 0.0
    for task in tasks:
        units = task.num_units
        drawn = rng.integers(0, units, (replicates, units)) + units * np.arange(replicates)[:, None]
        counts = np.bincount(drawn.ravel(), minlength=replicates * units).reshape(replicates, units)  # draws of each
        weights = counts[:, task.units].astype(float)  # [R, D]
        total = weights.sum(axis=1, keepdims=True)
        score_sum = score_sum + weights @ task.scores.T / total
        footprint_sum = footprint_sum + weights @ task.footprints.T / total
    return score_sum / len(tasks), footprint_sum / len(tasks)


# ---- intervals and ranks ----


@dataclass(frozen=True)
class Interval:
    """A percentile interval of replicate values. An end is infinite where the replicates there fall beyond the
    footprints tried (-inf: the smallest passed; +inf: the largest fell short): that end is open, None in JSON."""

    low: float
    high: float
    level: float

    @property
    def open_low(self) -> float | None:
        return None if np.isinf(self.low) else self.low

    @property
    def open_high(self) -> float | None:
        return None if np.isinf(self.high) else self.high

    def on_axis(self, smallest: float, largest: float) -> tuple[float, float]:
        """The ends where a figure draws them: an open end stops at the footprint tried that it names (-inf at the
        smallest, +inf at the largest), so "<31" (both ends -inf) is the point 31, not the whole range tried."""

        def end(value: float) -> float:
            return smallest if np.isneginf(value) else largest if np.isposinf(value) else value

        return end(self.low), end(self.high)

    def text(self, smallest: float, largest: float, scale: float = 100, digits: int = 0) -> str:
        """ "38–51", "<31–40", "66–>72"; one figure when both ends agree ("<31", ">72"). `smallest`/`largest`: the
        footprints tried, which an open end names."""

        def end(value: float) -> str:
            if np.isneginf(value):
                return f"<{scale * smallest:.{digits}f}"
            if np.isposinf(value):
                return f">{scale * largest:.{digits}f}"
            return f"{scale * value:.{digits}f}"

        low, high = end(self.low), end(self.high)
        return low if low == high else f"{low}–{high}"


def percentile_interval(values: np.ndarray, level: float) -> Interval:
    """The central `level` interval of replicate values, by order statistics (infinite values need no arithmetic)."""
    ordered = np.sort(values)
    count = len(ordered)
    alpha = (1 - level) / 2
    low = ordered[min(int(np.floor(alpha * count)), count - 1)]
    high = ordered[max(int(np.ceil((1 - alpha) * count)) - 1, 0)]
    return Interval(float(low), float(high), level)


def bca_interval(
    replicates: np.ndarray, estimate: float, jackknife: np.ndarray, strata: np.ndarray, level: float
) -> Interval:
    """Efron's bias-corrected and accelerated interval: the percentile interval with its ends moved by the share of
    replicates below the estimate (bias) and by the skew of the jackknife values (acceleration, from each task's
    own units, as for a stratified sample). The critical footprint is a crossing of estimated curves, whose
    bootstrap distribution is skewed and biased at the sample sizes benchmarks use: in simulation (tests) this
    brings the coverage of a 95% interval at 100 samples from about 0.90 to about 0.93.

    Falls back to the percentile interval where the estimate is censored (no crossing: "<" or ">") or where every
    replicate lies on one side of it; the acceleration is 0 where a jackknife value is censored."""
    count = len(replicates)
    below = (np.sum(replicates < estimate) + 0.5 * np.sum(replicates == estimate)) / count
    if not np.isfinite(estimate) or not 0 < below < 1:
        return percentile_interval(replicates, level)
    bias = NORMAL.inv_cdf(below)
    acceleration = 0.0
    if np.all(np.isfinite(jackknife)):
        numerator = denominator = 0.0
        for stratum in np.unique(strata):
            values = jackknife[strata == stratum]
            n = len(values)
            influence = (n - 1) * (values.mean() - values)
            numerator += np.sum(influence**3) / n**3
            denominator += np.sum(influence**2) / n**2
        acceleration = numerator / (6 * denominator**1.5) if denominator > 0 else 0.0
    ordered = np.sort(replicates)

    def end(quantile: float, upper: bool) -> float:
        z = bias + NORMAL.inv_cdf(quantile)
        share = NORMAL.cdf(bias + z / (1 - acceleration * z))
        index = int(np.ceil(share * count)) - 1 if upper else int(np.floor(share * count))
        return float(ordered[min(max(index, 0), count - 1)])

    alpha = (1 - level) / 2
    return Interval(end(alpha, False), end(1 - alpha, True), level)


def ahead_probability(a: Crossings, b: Crossings) -> float:
    """P(A needs a smaller footprint than B): the share of replicates whose intervals are strictly ordered (a "<"
    ahead of anything above its smallest footprint, two ">" tied, a ">" behind anything below its largest)."""
    return float(np.mean(a.high < b.low))


def rank_ranges(probabilities: dict[str, dict[str, float | None]], level: float) -> dict[str, tuple[int, int]]:
    """Each method's range of ranks (1 = the smallest footprint): from 1 + the methods separated ahead of it to the
    count less those separated behind it. A is separated ahead of B when P(A < B) >= 1 - (1 - level) / 2 (each
    direction at half the error, as the two ends of a `level` interval); a pair without replicates is not
    separated. Identical methods share a range; the ranges are pairwise, not a simultaneous confidence set."""
    needed = 1 - (1 - level) / 2
    methods = list(probabilities)
    ahead = {a: {b for b in methods if b != a and (probabilities[a].get(b) or 0.0) >= needed} for a in methods}
    return {m: (1 + sum(m in ahead[o] for o in methods), len(methods) - len(ahead[m])) for m in methods}


def format_rank(rank: tuple[int, int] | None) -> str:
    if rank is None:
        return "—"
    return str(rank[0]) if rank[0] == rank[1] else f"{rank[0]}–{rank[1]}"


# ---- one category ----


@dataclass
class CategoryStatistics:
    """What the replicates say about one category: the threshold's interval (full's own noise in it), and per curve
    its critical footprint's replicates and interval, and each point's score and footprint intervals."""

    target: Interval
    crossings: dict[str, Crossings] = field(default_factory=dict)
    critical: dict[str, Interval] = field(default_factory=dict)
    score: list[Interval] = field(default_factory=list)  # per column (0: the baseline)
    footprint: list[Interval] = field(default_factory=list)


def category_statistics(
    tasks: list[TaskSamples],
    curves: dict[str, list[int]],
    threshold: float,
    replicates: int,
    level: float,
    rng: np.random.Generator,
) -> CategoryStatistics:
    """`tasks`' rows are columns: 0 the baseline, then each curve's points (`curves`: label -> its columns, one per
    footprint). Every column is resampled with the same units."""
    scores, footprints = resample_means(tasks, replicates, rng)
    targets = threshold * scores[:, 0]
    point_scores, point_footprints = sample_means(tasks)
    jack_scores, jack_footprints, strata = jackknife_means(tasks)
    out = CategoryStatistics(percentile_interval(targets, level))
    for label, columns in curves.items():
        found = crossings(footprints[:, columns], scores[:, columns], targets)
        estimate = crossings(point_footprints[:, columns], point_scores[:, columns], threshold * point_scores[:, 0])
        jackknife = crossings(jack_footprints[:, columns], jack_scores[:, columns], threshold * jack_scores[:, 0])
        out.crossings[label] = found
        out.critical[label] = bca_interval(found.value, float(estimate.value[0]), jackknife.value, strata, level)
    out.score = [percentile_interval(scores[:, c], level) for c in range(scores.shape[1])]
    out.footprint = [percentile_interval(footprints[:, c], level) for c in range(footprints.shape[1])]
    return out
