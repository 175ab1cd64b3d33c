"""`kvbench sweep --refine`: knob values added where a curve crosses its threshold and its interval is too wide."""

from __future__ import annotations

import json

import pytest
import yaml
from test_scoring import sweep_cell

from kvbench import scoring
from kvbench.sweep import Cell, _between, _refinements, cells, load_config, refine


def test_half_way_keeps_the_knob_type_and_needs_room():
    assert _between(32, 512) == 272 and _between(0.1, 0.3) == 0.2 and _between(4, 5) is None
    assert _between(0.1, 0.1000001) is None  # nothing a six-figure value can put strictly between


def cell(task, keep):
    return Cell("m", "snapkv", {"keep": keep}, task, 1024, 64, {}, {}, None, "keep")


def board_for(tmp_path, per_sample):
    """full passes every sample; snapkv at keep 0.2 / 0.5 scores per_sample[keep] on tasks a and b."""
    known = {}
    for task in ("a", "b"):
        sweep_cell(tmp_path, "full", {}, task, "recall", 1.0, 1.0, samples=20)
        for keep, scores in per_sample.items():
            path = sweep_cell(
                tmp_path,
                "snapkv",
                {"keep": keep},
                task,
                "recall",
                sum(scores) / len(scores),
                keep,
                "keep",
                samples=scores,
            )
            known[path] = cell(task, keep)
    return scoring.score_runs(scoring.load_runs([tmp_path]), replicates=500), known


def test_a_wide_interval_gets_the_knob_value_half_way_for_every_task_of_the_category(tmp_path):
    noisy = [1.0] * 10 + [0.0] * 10  # half the samples pass at keep 0.2: a crossing known only roughly
    boards, known = board_for(tmp_path, {0.2: noisy, 0.5: [1.0] * 20})
    [interval] = boards[0].categories["recall"].interval.values()
    assert interval.high - interval.low > 0.02
    proposed = [cell for _, _, cell in _refinements(boards, known, width=0.02)]
    assert sorted((c.task, c.params["keep"], c.knob) for c in proposed) == [("a", 0.35, "keep"), ("b", 0.35, "keep")]
    assert _refinements(boards, known, width=0.9) == []  # narrow enough for that width


def test_a_crossing_between_distant_settings_is_refined_even_with_no_noise(tmp_path):
    """Every sample fails at keep 0.2 and passes at 0.5: the interval (given the grid) has no width, but the crossing
    lies somewhere in a step of 30% of full's footprint."""
    boards, known = board_for(tmp_path, {0.2: [0.0] * 20, 0.5: [1.0] * 20})
    [interval] = boards[0].categories["recall"].interval.values()
    assert interval.high - interval.low < 1e-6
    assert [cell.params["keep"] for _, _, cell in _refinements(boards, known, width=0.2)] == [0.35, 0.35]
    assert _refinements(boards, known, width=0.31) == []  # a step of 30% is fine at that width


def test_a_censored_curve_gets_nothing(tmp_path):
    boards, known = board_for(tmp_path / "never", {0.2: [0.0] * 20, 0.5: [0.5] * 20})  # ">": nothing passes
    assert _refinements(boards, known, width=0.01) == []


@pytest.mark.slow
def test_refine_runs_ordinary_resumable_cells_on_the_bundled_model(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": ["kvbench-tiny"],
                "methods": [{"name": "full"}, {"name": "streamingllm", "params": {"sink": 4}, "values": [512, 1024]}],
                "tasks": ["kvbench_synth_recall"],
                "context_lengths": [1024],
                "chunk_sizes": [256],
                "metadata": {"num_samples": 6},
                "model_args": {"device": "cpu"},
            }
        )
    )
    out = tmp_path / "out"
    from kvbench.sweep import run_sweep

    run_sweep(config, out, print_fn=lambda *_: None)
    added = refine(config, out, width=0.01, budget=1, print_fn=lambda *_: None)
    [new] = added
    # 1 of 3 needles found with a window of 512 (at 1K tokens), all with 1024: the crossing lies between them
    assert new.params == {"sink": 4, "window": 768} and new.knob == "window"
    assert (new.folder(out) / "results.json").is_file() and (
        new.folder(out) / "samples_kvbench_synth_recall.jsonl"
    ).is_file()
    assert yaml.safe_load((out / "refined.yaml").read_text()) == [new.as_dict()]
    record = json.loads((new.folder(out) / "results.json").read_text())["config"]["kvbench_sweep"]
    assert record["params"]["window"] == 768 and record["knob"] == "window"
    grid = {c.folder(out) for c in cells(load_config(config))}
    assert new.folder(out) not in grid and len(list(out.glob("*/results.json"))) == len(grid) + 1
    assert refine(config, out, width=0.01, budget=1, print_fn=lambda *_: None) == added  # resumed: nothing rerun
    assert len(list(out.glob("*/results.json"))) == len(grid) + 1


def test_a_curve_that_stops_moving_is_left_alone(tmp_path, monkeypatch):
    """A knob value half-way that lands on an existing setting's footprint (a discrete knob: head counts) changes
    nothing; refining that curve again would spend the budget on the same point."""
    from test_scoring import result_file

    import kvbench.sweep as sweep

    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": ["m"],
                "methods": [{"name": "full"}, {"name": "snapkv", "values": [0.2, 0.5]}],
                "tasks": ["a"],
                "context_lengths": [1024],
                "chunk_sizes": [64],
            }
        )
    )
    out = tmp_path / "out"

    def write(cell, score, footprint):
        cell.folder(out).mkdir(parents=True)
        result_file(
            cell.folder(out) / "results.json", cell.method, cell.params, {"a": ("recall", score, footprint)}, samples=20
        )

    for cell in cells(load_config(config)):
        score, footprint = {None: (1.0, 1.0), 0.2: (0.0, 0.2), 0.5: (1.0, 0.5)}[cell.params.get("keep")]
        write(cell, score, footprint)
    ran = []

    def run_cells(proposed, out, print_fn, **_):  # each added setting lands on keep 0.5's footprint and score
        ran.extend(proposed)
        for cell in proposed:
            write(cell, 1.0, 0.5)

    monkeypatch.setattr(sweep, "run_cells", run_cells)
    added = refine(config, out, width=0.05, budget=10, print_fn=lambda *_: None)
    assert [cell.params["keep"] for cell in added] == [0.35] and ran == added
