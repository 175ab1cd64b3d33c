"""The critical KV footprint on hand-made curves, and reading result files (bad ones named in a warning).

The round trip through real lm-eval result files is in tests/test_sweep.py (the sweep writes them).
"""

from __future__ import annotations

import json

import pytest

from kvbench.scoring import ResultFileWarning, critical_footprint, load_runs, parse_categories, score_runs


def crit(points, target=0.9):
    c = critical_footprint(points, target)
    return c.mark, round(c.value, 6)


def test_monotone_curve_crosses_where_the_line_meets_the_target():
    # 0.8 at 0.2, 1.0 at 0.4: the line meets 0.9 half-way
    assert crit([(0.2, 0.8), (0.4, 1.0), (0.6, 1.0)]) == ("", 0.3)


def test_point_exactly_on_the_target_passes():
    assert crit([(0.2, 0.5), (0.4, 0.9), (0.6, 1.0)]) == ("", 0.4)


def test_non_monotone_dip_above_the_crossing_moves_it_up():
    # passes at 0.2, dips below at 0.5, passes again from 0.6: the curve must stay above from x on
    points = [(0.1, 0.5), (0.2, 1.0), (0.5, 0.7), (0.7, 0.9), (0.9, 1.0)]
    assert crit(points) == ("", 0.7)
    # a dip that stays above the target changes nothing
    assert crit([(0.1, 0.8), (0.3, 1.0), (0.5, 0.92), (0.9, 1.0)]) == ("", 0.2)


def test_never_reaching_the_threshold_is_marked_above_the_largest_run():
    assert crit([(0.1, 0.1), (0.5, 0.5), (0.8, 0.85)]) == (">", 0.8)


def test_always_above_is_marked_below_the_smallest_run():
    assert crit([(0.3, 0.95), (0.1, 0.91), (0.6, 1.0)]) == ("<", 0.1)


def test_single_run():
    assert crit([(0.4, 0.95)]) == ("<", 0.4)
    assert crit([(0.4, 0.5)]) == (">", 0.4)


def test_ties_at_one_footprint_are_averaged():
    # 0.7 and 0.9 at 0.2 -> 0.8; then the line to (0.4, 1.0) meets 0.9 at 0.3
    assert crit([(0.2, 0.7), (0.2, 0.9), (0.4, 1.0)]) == ("", 0.3)
    assert crit([(0.5, 1.0), (0.5, 0.9)]) == ("<", 0.5)


def test_peak_is_interpolated_at_the_crossing():
    c = critical_footprint([(0.2, 0.8), (0.4, 1.0)], 0.9, peaks=[(0.3, 100.0), (0.5, 300.0)])
    assert (round(c.peak, 6), round(c.peak_bytes, 6)) == (0.4, 200.0)
    assert str(c) == "30%"


def test_no_points_is_an_error():
    with pytest.raises(ValueError, match="no runs"):
        critical_footprint([], 0.9)


# ---- result files ----


def result_file(path, method, params, tasks, model="m", chunk=64, context_length=1024):
    """A results JSON shaped as lm-eval writes it with --model kvbench (see tests/test_sweep.py for real ones).
    tasks: {task: (category, score, footprint)}."""
    data = {
        "results": {t: {"alias": t, "score,none": s, "score_stderr,none": 0.0, "kv_footprint,none": f}
                    for t, (_, s, f) in tasks.items()},
        "configs": {t: {"metadata": {"category": c, "context_length": context_length}} for t, (c, _, _) in tasks.items()},
        "config": {"kvbench": {"model": model, "method": method, "method_params": params, "chunk_size": chunk,
                               "tasks": {t: {"kv_footprint": f, "kv_peak": f, "kv_peak_bytes": 1000 * f, "requests": 2}
                                         for t, (_, _, f) in tasks.items()}}},
    }
    path.write_text(json.dumps(data))
    return path


def write_curve(tmp_path, model="m", chunk=64, with_full=True):
    folder = tmp_path / f"{model}-{chunk}"
    folder.mkdir()
    if with_full:
        result_file(folder / "results_full.json", "full", {}, {"a": ("recall", 1.0, 1.0), "b": ("recall", 0.8, 1.0)},
                    model, chunk)
    for keep, (sa, sb) in {0.2: (0.5, 0.3), 0.5: (0.9, 0.7), 0.8: (1.0, 0.8)}.items():
        result_file(folder / f"results_snap{keep}.json", "snapkv", {"keep": keep, "recent": 64},
                    {"a": ("recall", sa, keep), "b": ("recall", sb, keep)}, model, chunk)
    return folder


def test_category_score_is_the_mean_of_its_tasks_and_full_is_the_baseline(tmp_path):
    [board] = score_runs(load_runs([write_curve(tmp_path)]))
    recall = board.categories["recall"]
    assert recall.baseline == pytest.approx(0.9) and recall.target == pytest.approx(0.81)
    assert [(p.footprint, round(p.score, 6)) for p in recall.points] == [(0.2, 0.4), (0.5, 0.8), (0.8, 0.9)]
    critical = recall.critical["snapkv"]
    assert critical.mark == "" and critical.value == pytest.approx(0.5 + 0.3 * 0.01 / 0.1)
    assert (board.model, board.context_length, board.chunk_size) == ("m", 1024, 64)


def test_groups_by_model_and_chunk_size(tmp_path):
    boards = score_runs(load_runs([write_curve(tmp_path, "m", 64), write_curve(tmp_path, "m", 128),
                                   write_curve(tmp_path, "other", 64)]))
    assert [(b.model, b.chunk_size) for b in boards] == [("m", 128), ("m", 64), ("other", 64)]


def test_missing_baseline_is_an_error_naming_the_group(tmp_path):
    runs = load_runs([write_curve(tmp_path, "m", 64), write_curve(tmp_path, "nofull", 32, with_full=False)])
    with pytest.raises(ValueError, match="no baseline: group model=nofull, context_length=1024, chunk_size=32"):
        score_runs(runs)


def test_malformed_and_partial_files_are_named_in_a_warning_and_left_out(tmp_path):
    folder = write_curve(tmp_path)
    (folder / "results_half.json").write_text('{"results": {"a": {"score,none": 0.')  # cut mid-write
    partial = json.loads((folder / "results_full.json").read_text())
    del partial["results"]["b"]
    (folder / "results_partial.json").write_text(json.dumps(partial))
    hf = json.loads((folder / "results_full.json").read_text())
    del hf["config"]["kvbench"]
    (folder / "results_hf.json").write_text(json.dumps(hf))
    with pytest.warns(ResultFileWarning) as caught:
        runs = load_runs([folder])
    messages = " ".join(str(w.message) for w in caught)
    for name in ("results_half.json", "results_partial.json", "results_hf.json"):
        assert name in messages
    assert "no config.kvbench" in messages and "no score" in messages
    assert len(runs) == 4


def test_tasks_outside_kvbench_are_mapped_to_categories_by_flag(tmp_path):
    folder = write_curve(tmp_path)
    data = json.loads((folder / "results_full.json").read_text())
    data["configs"]["a"]["metadata"] = {"context_length": 1024}
    (folder / "results_full.json").write_text(json.dumps(data))
    with pytest.warns(ResultFileWarning, match="--category a=CATEGORY"):
        load_runs([folder])
    runs = load_runs([folder], parse_categories(["a=recall"]))
    assert {t.task for t in runs[-1].tasks} == {"a", "b"}
    with pytest.raises(ValueError, match="TASK=CATEGORY"):
        parse_categories(["a"])


def test_variants_of_a_method_are_separate_curves(tmp_path):
    folder = write_curve(tmp_path)
    for keep in (0.2, 0.8):
        result_file(folder / f"results_patched{keep}.json", "snapkv", {"keep": keep, "recent": 32},
                    {"a": ("recall", 1.0, keep), "b": ("recall", 1.0, keep)})
    [board] = score_runs(load_runs([folder]))
    assert set(board.categories["recall"].critical) == {"snapkv (recent=64)", "snapkv (recent=32)"}
    assert str(board.categories["recall"].critical["snapkv (recent=32)"]) == "<20%"
