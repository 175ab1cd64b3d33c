"""The published kvbench-tiny table is reproducible from the files published beside it: re-scoring the sweep's result
and per-sample files (leaderboards/kvbench-tiny/sweep.tar.xz) with the default seed gives the published
leaderboard.json and thresholds.json byte for byte (leaderboards/README.md gives the commands that made them)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from kvbench import cli

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "leaderboards" / "kvbench-tiny"


@pytest.fixture(scope="module")
def published_sweep(tmp_path_factory):
    """The archive unpacked where the commands ran: paths in the JSON name `sweeps/kvbench-tiny/<cell>/...`."""
    where = tmp_path_factory.mktemp("published")
    with tarfile.open(PUBLISHED / "sweep.tar.xz") as archive:
        archive.extractall(where, filter="data")
    assert (where / "sweeps" / "kvbench-tiny").is_dir()
    return where


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, extra",
    [("leaderboard.json", []), ("thresholds.json", ["--thresholds", "0.85,0.9,0.95"])],
)
def test_rescoring_the_published_files_gives_the_published_table(published_sweep, monkeypatch, name, extra):
    monkeypatch.chdir(published_sweep)
    out = published_sweep / name
    assert cli.main(["leaderboard", "sweeps/kvbench-tiny", "--format", "json", "--out", str(out), *extra]) == 0
    assert out.read_text() == (PUBLISHED / name).read_text()


def test_the_archive_holds_every_cell_with_its_per_sample_rows(published_sweep):
    cells = [p for p in (published_sweep / "sweeps" / "kvbench-tiny").iterdir() if p.is_dir()]
    # 176 cells of sweep_kvbench_tiny.yaml, 22 of the multi-question one, 140 + 80 of the newer methods (aware, agnostic), 12 refined
    assert len(cells) >= 430
    for cell in cells:
        tasks = sorted(p.name for p in cell.glob("samples_*.jsonl"))
        assert (cell / "results.json").is_file() and len(tasks) == 1, cell
