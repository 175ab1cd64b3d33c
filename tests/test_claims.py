"""Sweeps at cluster scale: claimed cells (kvbench/claims.py), workers started by submitit (kvbench/launch.py),
`kvbench sweep --status`, retries of failing cells, and the leaderboard naming what is missing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from kvbench import claims, cli, sweep
from kvbench.sweep import cells, load_config, run_cells, run_sweep

BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def events(folder: Path) -> list[str]:
    return [record["event"] for record in claims.attempts(folder)]


def cell_folders(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))


# ---- claims, without a model ----


def test_one_claim_per_cell_however_many_race_for_it(tmp_path):
    won = []
    barrier = threading.Barrier(8)

    def race():
        barrier.wait()
        won.append(claims.try_claim(tmp_path / "cell", retries=1))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(claim is not None for claim in won) == 1
    assert events(tmp_path / "cell") == ["start"]


def lost_node_claim(folder: Path, refreshed: float) -> None:
    """A claim as a worker on another host writes it (its process cannot be looked up from here)."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"host": "lost-node", "pid": 1, "token": "t0", "started": refreshed, "refreshed": refreshed}
    (folder / claims.CLAIM).write_text(json.dumps(record))


def test_a_claim_from_another_host_holds_until_it_expires(tmp_path):
    folder = tmp_path / "cell"
    lost_node_claim(folder, time.time())
    assert claims.state(folder, retries=1, expiry=60).status == "running"
    assert claims.try_claim(folder, retries=1, expiry=60) is None
    lost_node_claim(folder, time.time() - 61)  # not refreshed for longer than the expiry: its worker is gone
    claim = claims.try_claim(folder, retries=1, expiry=60)
    assert claim is not None and events(folder) == ["expired", "start"]
    assert claims.attempts(folder)[0]["host"] == "lost-node"


def test_a_claim_of_a_process_gone_from_this_host_is_taken_at_once(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = tmp_path / "cell"
    folder.mkdir()
    now = time.time()
    record = {"host": socket.gethostname(), "pid": gone.pid, "token": "t0", "started": now, "refreshed": now}
    (folder / claims.CLAIM).write_text(json.dumps(record))
    assert claims.try_claim(folder, retries=1, expiry=3600) is not None


def test_a_worker_whose_claim_was_taken_over_discards_its_results(tmp_path):
    folder = tmp_path / "cell"
    mine = claims.try_claim(folder, retries=1)
    lost_node_claim(folder, time.time())  # taken over (as after an expiry) while "mine" still ran
    written = []
    assert not claims.commit(mine, lambda: written.append(True), seconds=1.0)
    assert written == [] and mine.lost.is_set() and not claims.refresh(mine)
    assert events(folder) == ["start", "discarded"]
    assert json.loads((folder / claims.CLAIM).read_text())["host"] == "lost-node"  # the holder keeps the cell


def test_the_claim_is_refreshed_while_the_cell_runs(tmp_path):
    folder = tmp_path / "cell"
    claim = claims.try_claim(folder, retries=1, expiry=0.6)
    first = json.loads((folder / claims.CLAIM).read_text())["refreshed"]
    with claims.kept_alive(claim, expiry=0.6):
        time.sleep(0.5)
        assert json.loads((folder / claims.CLAIM).read_text())["refreshed"] > first
        assert claims.state(folder, retries=1, expiry=0.6).status == "running"
        time.sleep(0.3)
        assert claims.state(folder, retries=1, expiry=0.6).status == "running"  # 0.8 s after the claim: refreshed


class FlakyRunner:
    """Stands in for sweep.CellRunner (no model): cells whose window is in `fails` raise that many times."""

    fails: dict = {}
    calls: list = []

    def __init__(self, cell):
        self.model_name = cell.model

    def evaluate(self, cell):
        FlakyRunner.calls.append(cell.key)
        window = cell.params.get("window")
        if FlakyRunner.fails.get(window, 0) > 0:
            FlakyRunner.fails[window] -= 1
            raise RuntimeError(f"boom at window {window}")
        return {"config": {}, "results": {}}


@pytest.fixture
def grid_config(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "models": ["kvbench-tiny"],
                "methods": [{"name": "full"}, {"name": "streamingllm", "params": {"sink": 4}, "values": [16, 64, 256]}],
                "tasks": ["kvbench_synth_recall"],
                "context_lengths": [1024],
                "chunk_sizes": [256],
                "metadata": {"num_samples": 2},
                "model_args": {"device": "cpu"},
            }
        )
    )
    return path


def test_a_failing_cell_is_recorded_retried_and_then_reported(grid_config, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "CellRunner", FlakyRunner)
    FlakyRunner.calls = []
    FlakyRunner.fails = {16: 1, 64: 5}  # window 16 fails once (a retry saves it); window 64 always
    out = tmp_path / "out"
    printed = []
    ran = run_sweep(grid_config, out, print_fn=printed.append, retries=1)
    by_window = {cell.params.get("window"): cell for cell in cells(load_config(grid_config))}
    assert sorted(c.params.get("window") or 0 for c in ran) == [0, 16, 256]
    assert events(by_window[16].folder(out)) == ["start", "failed", "start", "done"]
    assert events(by_window[64].folder(out)) == ["start", "failed", "start", "failed"]
    error = json.loads((by_window[64].folder(out) / claims.ERROR).read_text())
    assert error["failures"] == 2 and error["error"] == "RuntimeError: boom at window 64"
    assert "Traceback" in error["traceback"] and "boom at window 64" in error["traceback"]
    assert any("boom at window 64 (will be retried" in line for line in printed)
    assert any("boom at window 64 (failed 2 time(s): given up" in line for line in printed)

    report = sweep.status(out)
    assert report.splitlines()[0] == f"{out}: 4 cells: 3 done, 0 running, 1 failed, 0 pending"
    assert "failed   kvbench-tiny streamingllm(sink=4,window=64)" in report and "after 2 attempt(s)" in report
    assert "RuntimeError: boom at window 64" in report

    # a rerun with more retries tries it again (its count goes on), and a finished sweep has nothing to run
    FlakyRunner.fails = {64: 0}
    assert [c.params["window"] for c in run_sweep(grid_config, out, print_fn=printed.append, retries=2)] == [64]
    assert sweep.status(out).splitlines()[0] == f"{out}: 4 cells: 4 done, 0 running, 0 failed, 0 pending"


def test_status_shows_running_cells_with_host_and_age_and_an_eta(grid_config, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "CellRunner", FlakyRunner)
    FlakyRunner.fails = {}
    out = tmp_path / "out"
    grid = cells(load_config(grid_config))
    sweep.record_grid(out, grid, retries=1)
    run_cells(grid[:2], out, print_fn=lambda *_: None)
    lost_node_claim(grid[2].folder(out), time.time() - 90)
    report = sweep.status(out)
    assert report.splitlines()[0] == f"{out}: 4 cells: 2 done, 1 running, 0 failed, 1 pending"
    assert (
        "running  kvbench-tiny streamingllm(sink=4,window=64)" in report and "on lost-node (pid 1) for 0:01:3" in report
    )
    assert report.splitlines()[-1].startswith("ETA ") and "from 2 finished" in report


def test_status_of_a_folder_without_a_grid_says_so(tmp_path):
    with pytest.raises(ValueError, match="no grid.json"):
        sweep.status(tmp_path)
    assert cli.main(["sweep", "--status", str(tmp_path)]) == 2


def test_executor_options_are_checked(grid_config, tmp_path):
    assert cli.main(["sweep", str(grid_config), "--out", str(tmp_path), "--executor", "local", "--shard", "0/2"]) == 2
    assert cli.main(["sweep", str(grid_config), "--out", str(tmp_path), "--retries", "-1"]) == 2


def test_gpus_are_shared_round_robin():
    from kvbench.launch import gpu_plan

    assert gpu_plan(2, 1, ["0", "1", "2", "3"]) == ["0", "1"]
    assert gpu_plan(5, 1, ["0", "1"]) == ["0", "1", "0", "1", "0"]
    assert gpu_plan(3, 2, ["4", "5", "6"]) == ["4,5", "6,4", "5,6"]
    assert gpu_plan(2, 0, []) == ["", ""]


def test_local_workers_share_the_cores_unless_omp_num_threads_says(monkeypatch):
    from kvbench.launch import cpu_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert cpu_threads(1, {}) == 8
    assert cpu_threads(2, {}) == 4
    assert cpu_threads(3, {}) == 2  # rounded down: never more threads than cores
    assert cpu_threads(16, {}) == 1  # at least one
    assert cpu_threads(2, {"OMP_NUM_THREADS": "3"}) is None  # the user's setting stands


def test_the_slurm_path_writes_a_job_array_script(grid_config, tmp_path, monkeypatch):
    """No cluster here: fake `srun` and `sbatch` on PATH; the sbatch script submitit writes is what SLURM would run."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    for tool in ("srun", "sbatch"):
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    out = tmp_path / "out"
    args = ["sweep", str(grid_config), "--out", str(out), "--executor", "slurm", "--workers", "3"]
    assert cli.main([*args, "--partition", "gpu", "--time-limit", "90", "--array-parallelism", "2"]) == 0
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=90"):
        assert line in script, script
    assert "-m submitit.core._submit" in script and str(out / ".submitit") in script
    assert len(list((out / ".submitit").glob("4242_*_submitted.pkl"))) == 3  # one pickled worker call each


def test_a_sweep_folder_with_missing_or_failed_cells_is_named_by_the_leaderboard(tmp_path, capsys):
    from test_scoring import sweep_cell

    out = tmp_path / "out"
    sweep_cell(out, "full", {}, "a", "recall", 1.0, 1.0)
    sweep_cell(out, "streamingllm", {"window": 16}, "a", "recall", 0.5, 0.3, "window")
    failing = sweep.Cell("m", "streamingllm", {"window": 64}, "a", 1024, 64, {}, {}, None, "window")
    sweep.record_grid(out, [failing], retries=0)
    claim = claims.try_claim(failing.folder(out), retries=0)
    claims.record_failure(claim, RuntimeError("out of memory"))
    json_out = tmp_path / "board.json"
    assert cli.main(["leaderboard", str(out), "--format", "json", "--out", str(json_out)]) == 0
    err = capsys.readouterr().err
    assert "1 failed and 0 unfinished cell(s) of the sweep's grid are not scored" in err
    assert "failed: m streamingllm(window=64) a ctx=1024 chunk=64 (RuntimeError: out of memory)" in err
    assert cli.main(["leaderboard", str(out), "--strict"]) == 2
    assert "(--strict)" in capsys.readouterr().err
