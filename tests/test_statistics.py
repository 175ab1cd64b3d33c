"""The statistics behind every interval and rank (kvbench.statistics): the crossing the bootstrap shares with the
point estimate, the coverage and width of the intervals in simulation, and ranks with ties and censored cells."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvbench import statistics
from kvbench.scoring import critical_footprint

GRID = np.linspace(0.1, 0.9, 9)  # the footprints a simulated method is run at


def replicate_crossings(values, low=0.1, high=0.9) -> statistics.Crossings:
    """Crossings whose replicates are `values` (finite: crossings; -inf: "<"; +inf: ">") on a curve tried from
    `low` to `high`."""
    values = np.asarray(values, dtype=float)
    return statistics.Crossings(
        values,
        np.where(np.isposinf(values), high, values),
        np.where(np.isneginf(values), low, values),
        np.zeros(len(values), int),
        np.zeros(len(values)),
        np.zeros((len(values), 1), int),
    )


# ---- one crossing for the point estimate and every replicate ----


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.01, 1.0), st.floats(0.0, 1.0)), min_size=1, max_size=8, unique_by=lambda p: p[0]),
    st.floats(0.05, 1.0),
)
def test_vectorised_crossings_equal_the_point_estimate(points, target):
    expected = critical_footprint(points, target)
    found = statistics.crossings(
        np.array([[x for x, _ in points]] * 3), np.array([[y for _, y in points]] * 3), np.full(3, target)
    )
    assert set(found.marks) == {expected.mark}
    if expected.mark == "":
        assert np.all(found.value == expected.value)
        assert np.all(found.low == expected.value) and np.all(found.high == expected.value)
    else:  # censored: the interval it is known to lie in, from the footprints tried
        xs = sorted(x for x, _ in points)
        assert np.all(found.low == (-np.inf if expected.mark == "<" else xs[-1]))
        assert np.all(found.high == (xs[0] if expected.mark == "<" else np.inf))


def test_crossings_sort_each_replicate_by_its_own_footprints():
    # the same three points, listed in another order in the second replicate
    found = statistics.crossings(
        np.array([[0.2, 0.4, 0.6], [0.6, 0.2, 0.4]]), np.array([[0.8, 1.0, 1.0], [1.0, 0.8, 1.0]]), np.array([0.9, 0.9])
    )
    assert found.value == pytest.approx([0.3, 0.3])


# ---- intervals ----


def test_open_ends_are_infinite_null_in_json_and_named_in_text():
    both = statistics.percentile_interval(
        np.array([-np.inf] * 30 + list(np.linspace(0.3, 0.5, 940)) + [np.inf] * 30), 0.95
    )
    assert np.isneginf(both.low) and np.isposinf(both.high)
    assert (both.open_low, both.open_high) == (None, None)
    assert both.text(0.31, 0.72) == "<31–>72"
    closed = statistics.percentile_interval(np.linspace(0.38, 0.51, 1000), 0.95)
    assert closed.open_low == pytest.approx(0.3833, abs=1e-3) and closed.text(0.31, 0.72) == "38–51"
    above = statistics.percentile_interval(np.full(100, np.inf), 0.95)
    assert above.text(0.31, 0.72) == ">72"  # every replicate beyond the largest footprint tried: one figure


def simulated_tasks(rng, n, curve, full=0.95, tasks=1):
    """Per-sample outcomes from a known curve, coupled across settings as real ones are: sample i passes at footprint
    x when u_i < curve(x), so a sample that passes at a small footprint passes at every larger one, and full attention
    passes it when u_i < full."""
    out = []
    for _ in range(tasks):
        u = rng.random(n)
        scores = np.vstack([u < full] + [u < p for p in curve]).astype(float)
        footprints = np.repeat(np.concatenate([[1.0], GRID])[:, None], n, axis=1)
        out.append(statistics.TaskSamples(np.arange(n), n, scores, footprints))
    return out


def coverage_and_width(n, replications=200, replicates=2000, threshold=0.9, full=0.95, tasks=1):
    curve = 0.97 / (1 + np.exp(-(GRID - 0.3) / 0.1))  # the pass rate at each footprint of the grid
    # The estimand: the critical footprint of the grid's piecewise-linear curve through the true means.
    truth = statistics.crossings(GRID[None], curve[None], np.array([threshold * full])).value[0]
    rng = np.random.default_rng(2024)
    covered, widths = 0, []
    for replication in range(replications):
        found = statistics.category_statistics(
            simulated_tasks(rng, n, curve, full, tasks),
            {"m": list(range(1, len(GRID) + 1))},
            threshold,
            replicates,
            0.95,
            np.random.default_rng(replication),
        )
        interval = found.critical["m"]
        covered += interval.low <= truth <= interval.high
        widths.append(min(interval.high, GRID[-1]) - max(interval.low, GRID[0]))
    return covered / replications, float(np.median(widths))


@pytest.mark.slow
def test_the_95_percent_interval_covers_the_true_critical_footprint_and_narrows_as_one_over_root_n():
    coverage_100, width_100 = coverage_and_width(100)
    coverage_400, width_400 = coverage_and_width(400)
    assert 0.90 <= coverage_100 <= 0.99 and 0.90 <= coverage_400 <= 0.99
    assert 0.5 * 0.75 <= width_400 / width_100 <= 0.5 * 1.25  # four times the samples, half the width


@pytest.mark.slow
def test_coverage_holds_when_a_category_has_several_tasks():
    coverage, _ = coverage_and_width(100, tasks=3)
    assert 0.90 <= coverage <= 0.99


def test_the_same_seed_gives_the_same_interval_and_the_baseline_noise_moves_the_threshold():
    curve = 0.97 / (1 + np.exp(-(GRID - 0.3) / 0.1))
    tasks = simulated_tasks(np.random.default_rng(0), 100, curve)
    run = [
        statistics.category_statistics(
            tasks, {"m": list(range(1, 10))}, 0.9, 500, 0.95, np.random.default_rng(np.random.SeedSequence([seed, 7]))
        )
        for seed in (1, 1, 2)
    ]
    assert run[0].critical == run[1].critical and run[0].critical != run[2].critical
    assert run[0].target.low < 0.9 * 0.95 * 1.0 < run[0].target.high  # full's own estimate is not exact


def test_a_multi_question_context_is_one_unit():
    """Two questions of one context are drawn together: with outcomes identical within each context, the replicate
    means move as if there were half as many samples, so the interval is wider than if they were independent."""
    rng = np.random.default_rng(3)
    u = np.repeat(rng.random(50), 2)  # 50 contexts, 2 questions each sharing their outcome
    curve = 0.97 / (1 + np.exp(-(GRID - 0.3) / 0.1))
    scores = np.vstack([u < 0.95] + [u < p for p in curve]).astype(float)
    footprints = np.repeat(np.concatenate([[1.0], GRID])[:, None], 100, axis=1)
    widths = {}
    for name, units in (("contexts", np.repeat(np.arange(50), 2)), ("documents", np.arange(100))):
        task = statistics.TaskSamples(units, int(units.max()) + 1, scores, footprints)
        found = statistics.category_statistics(
            [task], {"m": list(range(1, 10))}, 0.9, 2000, 0.95, np.random.default_rng(0)
        )
        widths[name] = found.score[5].high - found.score[5].low
    assert widths["contexts"] > 1.25 * widths["documents"]


# ---- ranks ----


def test_identical_methods_share_a_rank_and_a_method_always_ahead_ranks_strictly_ahead():
    rng = np.random.default_rng(0)
    a = replicate_crossings(rng.normal(0.3, 0.01, 1000))
    b = replicate_crossings(a.value)  # identical replicates
    c = replicate_crossings(a.value + 0.2)  # every replicate behind a's
    names = {"a": a, "b": b, "c": c}
    ahead = {x: {y: statistics.ahead_probability(names[x], names[y]) for y in names if y != x} for x in names}
    assert ahead["a"]["b"] == ahead["b"]["a"] == 0.0 and ahead["a"]["c"] == 1.0
    ranks = statistics.rank_ranges(ahead, 0.95)
    assert ranks == {"a": (1, 2), "b": (1, 2), "c": (3, 3)}
    assert statistics.format_rank(ranks["a"]) == "1–2" and statistics.format_rank(ranks["c"]) == "3"


def test_overlapping_methods_are_not_separated():
    rng = np.random.default_rng(1)
    a = replicate_crossings(rng.normal(0.30, 0.05, 1000))
    b = replicate_crossings(rng.normal(0.32, 0.05, 1000))
    ahead = {"a": {"b": statistics.ahead_probability(a, b)}, "b": {"a": statistics.ahead_probability(b, a)}}
    assert 0.5 < ahead["a"]["b"] < 0.975
    assert statistics.rank_ranges(ahead, 0.95) == {"a": (1, 2), "b": (1, 2)}


def test_censored_cells_order_by_what_they_are_known_to_be():
    below = replicate_crossings([-np.inf] * 100, low=0.31)  # "<31%": passes at its smallest run
    above = replicate_crossings([np.inf] * 100, high=0.72)  # ">72%": never reached
    above_too = replicate_crossings([np.inf] * 100, high=0.50)  # ">50%"
    middle = replicate_crossings([0.45] * 100)
    assert statistics.ahead_probability(below, above) == 1.0 and statistics.ahead_probability(above, below) == 0.0
    assert statistics.ahead_probability(below, middle) == 1.0  # "<31%" is ahead of anything above 31%
    assert statistics.ahead_probability(middle, above) == 1.0
    # two ">" cells tie, whatever their largest runs; ">50%" is not known to be ahead of ">72%"
    assert statistics.ahead_probability(above, above_too) == statistics.ahead_probability(above_too, above) == 0.0
    # "<31%" and a crossing at 25%: not ordered (the first may lie anywhere below 31%)
    early = replicate_crossings([0.25] * 100)
    assert statistics.ahead_probability(below, early) == statistics.ahead_probability(early, below) == 0.0


def test_an_open_end_is_drawn_at_the_footprint_it_names():
    inf = np.inf
    assert statistics.Interval(-inf, -inf, 0.95).on_axis(0.31, 0.72) == (0.31, 0.31)  # "<31": the point 31
    assert statistics.Interval(inf, inf, 0.95).on_axis(0.31, 0.72) == (0.72, 0.72)  # ">72"
    assert statistics.Interval(-inf, 0.4, 0.95).on_axis(0.31, 0.72) == (0.31, 0.4)
    assert statistics.Interval(0.38, inf, 0.95).on_axis(0.31, 0.72) == (0.38, 0.72)
    assert statistics.Interval(0.38, 0.51, 0.95).on_axis(0.31, 0.72) == (0.38, 0.51)
