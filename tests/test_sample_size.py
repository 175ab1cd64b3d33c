"""scripts/sample_size.py: how wide the intervals are at n samples per task, by paired subsamples of a sweep."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from test_views import curves

from kvbench import scoring

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sample_size.py"


def load_script():
    spec = importlib.util.spec_from_file_location("sample_size", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_subsample_keeps_the_same_units_in_every_run(tmp_path):
    sample_size = load_script()
    curves(tmp_path / "sweep")  # 5 runs of one task, 20 samples each
    runs = scoring.load_runs([tmp_path / "sweep"])
    smaller = sample_size.subsample(runs, 7, np.random.default_rng(0))
    kept = {tuple(sorted(task.samples.doc_ids.tolist())) for run in smaller for task in run.tasks}
    assert len(kept) == 1 and len(next(iter(kept))) == 7  # paired: the same 7 documents in every run
    for before, after in zip(runs, smaller, strict=True):
        [full_task], [small_task] = before.tasks, after.tasks
        assert small_task.n == 7 and small_task.score == pytest.approx(full_task.score)  # each sample: the run's score
    assert sample_size.subsample(runs, 50, np.random.default_rng(0))[0].tasks[0].n == 20  # never more than there are


def test_it_prints_a_width_row_per_size(tmp_path, capsys):
    sample_size = load_script()
    curves(tmp_path / "sweep")
    assert sample_size.main([str(tmp_path / "sweep"), "--sizes", "5,20", "--draws", "2", "--bootstrap", "200"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[0:2] for row in rows] == [["| 5", "2"], ["| 20", "1"]]  # all 20: one draw
    # two methods per draw: l2norm passes at its smallest run ("<30", open), snapkv crosses (closed)
    assert rows[0].endswith("| 2 of 4 |") and rows[1].endswith("| 1 of 2 |")
