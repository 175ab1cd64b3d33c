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


def result_file(path, method, params, tasks, model="m", chunk=64, context_length=1024, samples=None):
    """A results JSON shaped as lm-eval writes it with --model kvbench (see tests/test_sweep.py for real ones).
    tasks: {task: (category, score, footprint)}. `samples`: None (no per-sample file), a number of samples that all
    score the task's score (a bootstrap of them never moves), or {task: [per-sample scores]} (their mean is the
    task's score)."""
    if samples is not None:
        from kvbench.lmeval.samples import samples_path

        for t, (_, s, f) in tasks.items():
            scores = [s] * samples if isinstance(samples, int) else samples[t]
            rows = [{"doc_id": i, "filter": "none", "score": v, "kv_footprint": f} for i, v in enumerate(scores)]
            samples_path(path, t).write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = {
        "results": {
            t: {"alias": t, "score,none": s, "score_stderr,none": 0.0, "kv_footprint,none": f}
            for t, (_, s, f) in tasks.items()
        },
        "configs": {
            t: {"metadata": {"category": c, "context_length": context_length}} for t, (c, _, _) in tasks.items()
        },
        "config": {
            "kvbench": {
                "model": model,
                "method": method,
                "method_params": params,
                "chunk_size": chunk,
                "tasks": {
                    t: {"kv_footprint": f, "kv_peak": f, "kv_peak_bytes": 1000 * f, "requests": 2}
                    for t, (_, _, f) in tasks.items()
                },
            }
        },
    }
    path.write_text(json.dumps(data))
    return path


def write_curve(tmp_path, model="m", chunk=64, with_full=True):
    folder = tmp_path / f"{model}-{chunk}"
    folder.mkdir()
    if with_full:
        result_file(
            folder / "results_full.json",
            "full",
            {},
            {"a": ("recall", 1.0, 1.0), "b": ("recall", 0.8, 1.0)},
            model,
            chunk,
        )
    for keep, (sa, sb) in {0.2: (0.5, 0.3), 0.5: (0.9, 0.7), 0.8: (1.0, 0.8)}.items():
        result_file(
            folder / f"results_snap{keep}.json",
            "snapkv",
            {"keep": keep, "recent": 64},
            {"a": ("recall", sa, keep), "b": ("recall", sb, keep)},
            model,
            chunk,
        )
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
    boards = score_runs(
        load_runs([write_curve(tmp_path, "m", 64), write_curve(tmp_path, "m", 128), write_curve(tmp_path, "other", 64)])
    )
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
        result_file(
            folder / f"results_patched{keep}.json",
            "snapkv",
            {"keep": keep, "recent": 32},
            {"a": ("recall", 1.0, keep), "b": ("recall", 1.0, keep)},
        )
    [board] = score_runs(load_runs([folder]))
    assert set(board.categories["recall"].critical) == {"snapkv (recent=64)", "snapkv (recent=32)"}
    assert str(board.categories["recall"].critical["snapkv (recent=32)"]) == "<20%"


# ---- a sweep's layout: one results file per (setting, task) ----


def sweep_cell(out, method, params, task, category, score, footprint, knob=None, model="m", chunk=64, samples=None):
    """A results file where `kvbench sweep` puts it (OUT/<method>-<key>/results.json), with its sweep record."""
    key = f"{abs(hash((method, repr(sorted(params.items())), task, chunk))):016x}"[:16]
    folder = out / f"{method}-{key}"
    folder.mkdir(parents=True)
    path = result_file(
        folder / "results.json",
        method,
        params,
        {task: (category, score, footprint)},
        model,
        chunk,
        samples=None if samples is None else samples if isinstance(samples, int) else {task: samples},
    )
    data = json.loads(path.read_text())
    data["config"]["kvbench_sweep"] = {"method": method, "params": params, "task": task, "knob": knob, "key": key}
    path.write_text(json.dumps(data))
    return path


def test_a_category_point_is_the_mean_over_its_tasks_of_one_setting(tmp_path, capsys):
    # The example: tasks A and B; full 0.8 and 0.4 (target 0.9 x 0.6 = 0.54). streamingllm window 64:
    # A 0.8 at 0.20, B 0.0 at 0.30 -> (0.25, 0.4); window 256: A 0.8 at 0.50, B 0.4 at 0.60 -> (0.55, 0.6).
    # The line between the two means meets 0.54 at 0.25 + 0.3 x 0.14 / 0.2 = 0.46. Scored per file instead,
    # the points (0.2, 0.8), (0.3, 0), (0.5, 0.8), (0.6, 0.4) would give ">60%".
    out = tmp_path / "sweep"
    for task, score in (("A", 0.8), ("B", 0.4)):
        sweep_cell(out, "full", {}, task, "recall", score, 1.0)
    for window, cells in {64: {"A": (0.8, 0.2), "B": (0.0, 0.3)}, 256: {"A": (0.8, 0.5), "B": (0.4, 0.6)}}.items():
        for task, (score, footprint) in cells.items():
            sweep_cell(out, "streamingllm", {"sink": 4, "window": window}, task, "recall", score, footprint, "window")
    [board] = score_runs(load_runs([out]))
    recall = board.categories["recall"]
    assert recall.baseline == pytest.approx(0.6)
    assert [(round(p.footprint, 6), round(p.score, 6)) for p in recall.points] == [(0.25, 0.4), (0.55, 0.6)]
    assert recall.critical["streamingllm"].value == pytest.approx(0.46)
    assert all(len(p.files) == 2 for p in recall.points)  # each point is made of its two task files

    from kvbench.cli import main

    assert main(["leaderboard", str(out), "--format", "md"]) == 0
    table = capsys.readouterr().out
    assert "| streamingllm | 46% |" in table


def test_tasks_that_disagree_give_the_setting_mean_and_a_missing_task_leaves_the_setting_out(tmp_path):
    out = tmp_path / "sweep"
    for task, score in (("A", 1.0), ("B", 1.0), ("C", 0.4)):
        sweep_cell(out, "full", {}, task, "rag", score, 1.0)
    # keep 0.2: A passes, B fails, C in between -> mean score (0.9 + 0.1 + 0.4) / 3 = 0.4667 at footprint 0.3
    for task, score, footprint in (("A", 0.9, 0.2), ("B", 0.1, 0.4), ("C", 0.4, 0.3)):
        sweep_cell(out, "snapkv", {"keep": 0.2}, task, "rag", score, footprint, "keep")
    for task in ("A", "B", "C"):
        sweep_cell(out, "snapkv", {"keep": 0.6}, task, "rag", 0.8, 0.7, "keep")
    sweep_cell(out, "snapkv", {"keep": 0.4}, "A", "rag", 1.0, 0.5, "keep")  # B and C never ran
    with pytest.warns(ResultFileWarning, match=r"lacks task\(s\) B, C that the baseline ran"):
        [board] = score_runs(load_runs([out]))
    rag = board.categories["rag"]
    assert [(round(p.footprint, 6), round(p.score, 6)) for p in rag.points] == [(0.3, round(1.4 / 3, 6)), (0.7, 0.8)]
    # target 0.9 x 0.8 = 0.72: from (0.3, 0.4667) to (0.7, 0.8) the line meets it at 0.3 + 0.4 x 0.2533 / 0.3333
    assert rag.critical["snapkv"].value == pytest.approx(0.3 + 0.4 * (0.72 - 1.4 / 3) / (0.8 - 1.4 / 3))


def test_quantized_full_is_a_curve_of_its_own_and_leaves_the_baseline_alone(tmp_path):
    out = tmp_path / "sweep"
    for task in ("A", "B"):
        sweep_cell(out, "full", {"kv_bits": 16}, task, "icl", 0.8, 1.0)
        sweep_cell(out, "full", {"kv_bits": 4}, task, "icl", 0.2, 0.28, "kv_bits")
        sweep_cell(out, "full", {"kv_bits": 8}, task, "icl", 0.76, 0.53, "kv_bits")
    [board] = score_runs(load_runs([out]))
    icl = board.categories["icl"]
    assert icl.baseline == pytest.approx(0.8)  # 16-bit full only: the 4-bit run would drag it to 0.59
    assert set(icl.critical) == {"full (kv_bits=4/8)"}
    assert [(p.method, p.footprint) for p in icl.points] == [("full (kv_bits=4/8)", 0.28), ("full (kv_bits=4/8)", 0.53)]
    # 0.72 is crossed between (0.28, 0.2) and (0.53, 0.76)
    assert icl.critical["full (kv_bits=4/8)"].value == pytest.approx(0.28 + 0.25 * 0.52 / 0.56)


def test_a_sweep_over_budget_is_one_curve_beside_the_keep_curve(tmp_path):
    out = tmp_path / "sweep"
    defaults = {"recent": 64, "obs_window": 64, "kernel": 5, "schedule": "chunked", "kv_bits": 16}
    sweep_cell(out, "full", {}, "A", "recall", 1.0, 1.0)
    for budget, score in ((128, 0.5), (512, 0.8), (2048, 1.0)):
        sweep_cell(
            out, "snapkv", {**defaults, "keep": None, "budget": budget}, "A", "recall", score, budget / 4096, "budget"
        )
    [board] = score_runs(load_runs([out]))
    assert set(board.categories["recall"].critical) == {"snapkv"}  # one curve, not three labelled by budget
    # (0.125, 0.8) to (0.5, 1.0) meets 0.9 half-way
    assert board.categories["recall"].critical["snapkv"].value == pytest.approx(0.125 + 0.375 / 2)
    for keep, score in ((0.2, 0.6), (0.6, 1.0)):
        sweep_cell(out, "snapkv", {**defaults, "keep": keep, "budget": None}, "A", "recall", score, keep, "keep")
    [board] = score_runs(load_runs([out]))
    assert set(board.categories["recall"].critical) == {"snapkv (by budget)", "snapkv (by keep)"}


def test_plain_lm_eval_runs_without_a_record_take_the_one_varying_parameter_as_the_knob(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    result_file(folder / "results_full.json", "full", {}, {"a": ("recall", 1.0, 1.0)})
    for budget, score in ((100, 0.5), (400, 1.0)):
        result_file(
            folder / f"results_{budget}.json",
            "snapkv",
            {"budget": budget, "keep": None},
            {"a": ("recall", score, budget / 1000)},
        )
    [board] = score_runs(load_runs([folder]))
    assert set(board.categories["recall"].critical) == {"snapkv"}


def test_a_baseline_at_zero_or_at_chance_is_refused_not_scored(tmp_path, capsys):
    out = tmp_path / "sweep"
    # recall: full scores 0 (a random-weight model); icl: full at 0.15, below the 1/6 of guessing one label in six
    for task, category, score in (("kvbench_synth_recall", "recall", 0.0), ("kvbench_synth_icl", "icl", 0.15)):
        sweep_cell(out, "full", {}, task, category, score, 1.0)
        for window, footprint in ((16, 0.28), (64, 0.5)):
            sweep_cell(out, "streamingllm", {"sink": 4, "window": window}, task, category, 0.0, footprint, "window")
    with pytest.warns(ResultFileWarning) as caught:
        [board] = score_runs(load_runs([out]))
    messages = " ".join(str(w.message) for w in caught)
    assert "full attention scores 0, no better than chance (0)" in messages
    assert "full attention scores 0.15, no better than chance (0.167)" in messages
    assert board.categories == {}

    from kvbench.cli import main

    assert main(["leaderboard", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nothing to score" in err and "no better than chance" in err  # no "<28%" row, ever
