"""The footprint views on hand-made result files: several thresholds (a ranking that flips), the chunk-size view,
the memory view, and the KV trace figure from samples files."""

from __future__ import annotations

import json

import pytest
from test_scoring import sweep_cell

from kvbench import scoring, views
from kvbench.cli import main


def curves(out, chunk=64):
    """full 1.0; A: 0.86 at 20%, 1.0 at 50%; B: 0.96 at 30%, 1.0 at 60%. Every sample scores its run's score, so the
    bootstrap never moves a point and each rank is decided (a zero-width interval)."""
    sweep_cell(out, "full", {}, "t", "recall", 1.0, 1.0, chunk=chunk, samples=20)
    for name, points in {"snapkv": [(0.2, 0.86), (0.5, 1.0)], "l2norm": [(0.3, 0.96), (0.6, 1.0)]}.items():
        for footprint, score in points:
            sweep_cell(out, name, {"keep": footprint}, "t", "recall", score, footprint, "keep", chunk=chunk, samples=20)


def test_the_ranking_flips_between_85_and_95_percent(tmp_path, capsys):
    curves(tmp_path / "sweep")
    rows = {r["method"]: r for r in views.threshold_table(scoring.load_runs([tmp_path / "sweep"]), [0.85, 0.9, 0.95])}
    # at 0.85 snapkv passes at its smallest run (<20%), l2norm at its (<30%): both are known only to lie below
    # their smallest runs, so neither is ahead; at 0.9 snapkv needs 0.2 + 0.3 x 0.04 / 0.14 = 29%, below
    # l2norm's "<30%" only perhaps: still tied; at 0.95 it needs 0.2 + 0.3 x 0.09 / 0.14 = 39%, while l2norm's
    # smallest run (30%) still passes: l2norm is ahead
    assert rows["snapkv"]["critical"] == {"0.85": "<20% [<20]", "0.9": "29% [29]", "0.95": "39% [39]"}
    assert rows["l2norm"]["critical"] == {"0.85": "<30% [<30]", "0.9": "<30% [<30]", "0.95": "<30% [<30]"}
    assert rows["snapkv"]["rank"] == {"0.85": "1–2", "0.9": "1–2", "0.95": "2"}
    assert rows["l2norm"]["rank"] == {"0.85": "1–2", "0.9": "1–2", "0.95": "1"}
    assert rows["snapkv"]["rank_changes"] and rows["l2norm"]["rank_changes"] and rows["snapkv"]["n"] == 20
    assert main(["leaderboard", str(tmp_path / "sweep"), "--thresholds", "0.85,0.9,0.95"]) == 0
    table = capsys.readouterr().out
    assert "| method | 0.85 x full (rank) | 0.9 x full (rank) | 0.95 x full (rank) |" in table
    assert "| snapkv ↕ | <20% [<20] (1–2) | 29% [29] (1–2) | 39% [39] (2) |" in table
    assert main(["leaderboard", str(tmp_path / "sweep"), "--thresholds", "0.9,x"]) == 2


def test_the_chunk_size_view(tmp_path):
    curves(tmp_path / "sweep", chunk=128)
    out = tmp_path / "sweep"
    sweep_cell(out, "full", {}, "t", "recall", 1.0, 1.0, chunk=512, samples=20)
    for footprint, score in ((0.2, 0.5), (0.5, 1.0)):  # at chunks of 512 snapkv needs 0.2 + 0.3 x 0.4 / 0.5 = 44%
        sweep_cell(out, "snapkv", {"keep": footprint}, "t", "recall", score, footprint, "keep", chunk=512, samples=20)
    [(key, methods)] = views.chunk_curves(scoring.load_runs([out]), 0.9).items()
    assert key == ("m", 1024, "recall")
    assert [(p.chunk, str(p.critical)) for p in methods["snapkv"]] == [(128, "29%"), (512, "44%")]
    assert [(p.chunk, str(p.critical)) for p in methods["l2norm"]] == [(128, "<30%")]
    assert all(p.interval is not None for p in methods["snapkv"])  # per-sample rows: every point has its interval
    assert methods["l2norm"][0].tried == (0.3, 0.6)  # where its open lower end stops on the figure
    fig = views.chunks_figure(scoring.load_runs([out]), 0.9)
    [ax] = fig.axes
    snapkv = next(line for line in ax.get_lines() if list(line.get_xdata()) == [128, 512])
    assert list(snapkv.get_ydata()) == pytest.approx([20 + 30 * 0.04 / 0.14, 44.0])
    bars = [c for c in ax.collections if len(c.get_segments()) == 2]  # snapkv's two points, each on its bar
    assert bars and all(seg[0][0] == seg[1][0] for seg in bars[0].get_segments())  # vertical: footprint axis
    assert ax.get_xscale() == "log"


def test_the_memory_view_relates_measured_figures_to_the_idealised_ones(tmp_path):
    out = tmp_path / "sweep"
    for footprint, peak_bytes, speed in [(1.0, 4000, 10.0), (0.5, 2100, 18.0), (0.25, 900, 30.0)]:
        path = sweep_cell(out, "snapkv", {"keep": footprint}, "t", "recall", 1.0, footprint, "keep")
        data = json.loads(path.read_text())
        data["config"]["kvbench"]["tasks"]["t"]["kv_peak_bytes"] = peak_bytes
        data["config"]["kvbench"]["tokens_per_second"] = speed
        path.write_text(json.dumps(data))
    points = views.memory_points([out])
    assert sorted(p["peak_bytes"] for p in points) == [900, 2100, 4000]
    r = views.correlation([p["peak"] for p in points], [p["peak_bytes"] for p in points])
    assert r == pytest.approx(0.9986, abs=1e-3)  # peaks 0.25, 0.5, 1.0 against 900, 2100, 4000 bytes
    left, right = views.memory_figure([out]).axes[:2]
    assert left.get_title() == f"Pearson r = {r:.2f} over 3 (setting, task) points"
    assert right.get_title().startswith("Pearson r = -0.")  # faster as the footprint shrinks


def test_the_trace_figure_draws_each_runs_kv_held_its_area_and_its_peak(tmp_path):
    for method, held in (("full", [64, 128]), ("streamingllm", [40, 40])):
        path = sweep_cell(
            tmp_path / "runs", method, {"window": 36} if method != "full" else {}, "t", "recall", 1.0, 0.5
        )
        points = [
            {"tokens": 64, "new": 64, "active": 2080.0, "held_peak": 64, "held": held[0], "bytes_peak": 1, "bytes": 1},
            {
                "tokens": 128,
                "new": 64,
                "active": 2080.0 + 64 * held[0],
                "held_peak": held[0] + 64,
                "held": held[1],
                "bytes_peak": 1,
                "bytes": 1,
            },
        ]
        row = {"doc_id": 0, "doc": {"task": "t"}, "kv_footprint": 0.5, "kv_peak": 0.8, "kv_trace": points}
        (path.parent / "samples_t.jsonl").write_text(json.dumps(row) + "\n")
    runs = views.traces([tmp_path / "runs"])
    assert [r["label"] for r in runs] == ["full", "streamingllm (window=36)"]
    fig = views.trace_figure([tmp_path / "runs"])
    [ax] = fig.axes
    full = next(line for line in ax.get_lines() if line.get_label().startswith("full:"))
    # a sawtooth: up over each chunk as it is appended, down where the method evicts
    assert list(full.get_xdata()) == [0, 0, 64, 64, 64, 128, 128]
    assert list(full.get_ydata()) == [0, 0, 64, 64, 64, 128, 128]
    stream = next(line for line in ax.get_lines() if line.get_label().startswith("streamingllm"))
    assert list(stream.get_ydata()) == [0, 0, 64, 40, 40, 104, 40]
    assert full.get_label() == "full: footprint 50%, peak 80%"
    assert len(ax.collections) == 2  # the shaded areas
    with pytest.raises(ValueError, match="trace=true"):
        views.traces([tmp_path / "runs"], task="nothing")


def test_the_leaderboard_figure_draws_a_below_the_grid_interval_as_a_point_with_one_arrow(tmp_path):
    """l2norm passes at its smallest run (30%) in every replicate: "<30% [<30]". Its strip at the foot of the panel
    is the point 30 with a "<" mark, not a bar across every footprint it tried."""
    from kvbench import leaderboard

    curves(tmp_path / "sweep")
    fig = leaderboard.figure(scoring.score_runs(scoring.load_runs([tmp_path / "sweep"])), 0.9)
    [ax] = [a for a in fig.axes if a.get_lines()]
    strips = [line for line in ax.get_lines() if line.get_label() == "_interval"]
    snapkv = 20 + 30 * 0.04 / 0.14  # a crossing every replicate agrees on: a zero-width interval
    [first, second] = sorted(list(line.get_xdata()) for line in strips)
    assert first == pytest.approx([snapkv] * 2, abs=1e-3) and second == pytest.approx([30, 30])
    arrows = [line.get_marker() for line in ax.get_lines() if line.get_label() == "_open"]
    assert arrows == ["$<$"]
