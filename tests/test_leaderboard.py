"""`kvbench leaderboard`: formats, plots, reported rows kept apart, HTML escaping, warnings for bad files."""

from __future__ import annotations

import csv
import io
import json

import pytest
from test_scoring import result_file, write_curve

from kvbench import leaderboard
from kvbench.cli import main
from kvbench.scoring import load_runs, score_runs


def test_markdown_csv_json(tmp_path):
    boards = score_runs(load_runs([write_curve(tmp_path)]))
    md = leaderboard.render(boards, "md", 0.9)
    assert "| method | recall |" in md and "| snapkv | 53% |" in md
    [row] = list(csv.DictReader(io.StringIO(leaderboard.render(boards, "csv", 0.9))))
    assert row["method"] == "snapkv" and row["source"] == "measured" and row["critical"] == "53%"
    data = json.loads(leaderboard.render(boards, "json", 0.9))
    assert [r["footprint"] for r in data["runs"]] == [0.2, 0.5, 0.8]


def test_reported_rows_are_marked_and_never_mixed_in(tmp_path):
    boards = score_runs(load_runs([write_curve(tmp_path)]))
    plain = leaderboard.rows(boards, 0.9)
    both = leaderboard.rows(boards, 0.9, reported=True)
    assert [r for r in both if r["source"] == "measured"] == plain
    reported = [r for r in both if r["source"] != "measured"]
    assert reported and all(r["source"].startswith("reported") for r in reported)
    duo = {r["category"]: r["critical"] for r in reported if r["method"] == "DuoAttention"}
    assert duo["recall"] == "58%" and duo["travel_planning"] == "91%"
    md = leaderboard.render(boards, "md", 0.9, reported=True)
    assert "| PyramidKV (patched) (reported) | 64% | <34% |" in md
    assert "(reported (arXiv 2506.17121, Table 2))" in md


def test_html_is_self_contained_sortable_and_escapes_names(tmp_path):
    folder = write_curve(tmp_path)
    evil = "<script>alert(1)</script>"
    for name, method, params in (("full", "full", {}), ("x", evil, {"keep": 0.5})):
        result_file(folder / f"results_evil_{name}.json", method, params, {"<b>task</b>": ("<i>cat</i>", 1.0, 0.5)})
    page = leaderboard.render(score_runs(load_runs([folder])), "html", 0.9)
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<i>cat</i>" not in page and "&lt;i&gt;cat&lt;/i&gt;" in page
    assert 'src="data:image/png;base64,' in page and 'addEventListener("click"' in page


def test_cli_writes_table_and_plot_and_warns_about_bad_files(tmp_path, capsys):
    folder = write_curve(tmp_path)
    (folder / "results_broken.json").write_text("{not json")
    out, png = tmp_path / "board.md", tmp_path / "board.png"
    assert main(["leaderboard", str(folder), "--out", str(out), "--plot", str(png), "--threshold", "0.4"]) == 0
    assert "results_broken.json: left out" in capsys.readouterr().err
    assert "| snapkv | <20% |" in out.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_missing_baseline_is_a_clear_error(tmp_path, capsys):
    folder = write_curve(tmp_path, "lonely", 32, with_full=False)
    assert main(["leaderboard", str(folder)]) == 2
    assert "no baseline: group model=lonely, context_length=1024, chunk_size=32" in capsys.readouterr().err


def test_up_to_a_hundred_methods_each_get_their_own_colour_and_marker():
    looks = leaderboard.styles([f"method{i}" for i in range(100)])
    assert len({(look["color"], look["marker"]) for look in looks.values()}) == 100


def test_every_method_is_drawn_in_its_own_style_and_the_threshold_carries_its_value(tmp_path):
    folder = write_curve(tmp_path)
    for keep in (0.2, 0.5, 0.8):  # a second curve on exactly the first one's points: both must stay visible
        result_file(
            folder / f"results_twin{keep}.json",
            "twin",
            {"keep": keep},
            {"a": ("recall", 0.5, keep), "b": ("recall", 0.3, keep)},
        )
    fig = leaderboard.figure(score_runs(load_runs([folder])), 0.9)
    [ax] = fig.axes
    curves = [line for line in ax.get_lines() if line.get_label() in ("snapkv", "twin")]
    styles = {(line.get_marker(), line.get_linestyle(), line.get_color(), line.get_markersize()) for line in curves}
    assert len(curves) == 2 and len(styles) == 2
    assert all(line.get_markerfacecolor() == "none" for line in curves)  # hollow: coinciding markers both show
    [threshold] = [line for line in ax.get_lines() if line.get_label().startswith("0.9 x full")]
    assert threshold.get_label() == "0.9 x full = 0.81" and threshold.get_ydata()[0] == pytest.approx(0.81)
    assert [t.get_text() for t in ax.texts] == ["0.9 x full = 0.81"]
    [legend] = fig.legends  # one legend for the figure, below the panels
    assert [t.get_text() for t in legend.get_texts()] == ["snapkv", "twin"]
    assert legend.get_window_extent(fig.canvas.get_renderer()).y1 < ax.get_window_extent().y0
