"""Real `kvbench sweep` workers on the bundled model sharing one folder through claimed cells: several at once, one
killed in the middle, and the local executor (submitit). A file of its own so that pytest-xdist runs these slow
tests beside the rest of tests/test_claims.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_claims import BIN, ENV, cell_folders, events  # one definition of how workers are started and read

from kvbench import claims, leaderboard, scoring
from kvbench.sweep import cells, load_config


def grid(path: Path, window_values: list[int]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "models": ["kvbench-tiny"],
                "methods": [
                    {"name": "full"},
                    {"name": "streamingllm", "params": {"sink": 4}, "values": window_values},
                ],
                "tasks": ["kvbench_synth_recall", "kvbench_synth_rag"],
                "context_lengths": [1024],
                "chunk_sizes": [256],
                "metadata": {"num_samples": 2},
                "model_args": {"device": "cpu"},
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def twelve_cells(tmp_path_factory):
    path = grid(tmp_path_factory.mktemp("twelve") / "sweep.yaml", [16, 32, 64, 128, 256])
    assert len(cells(load_config(path))) == 12
    return path


def board_json(folder) -> dict:
    data = json.loads(leaderboard.render(scoring.score_runs(scoring.load_runs([folder])), "json", 0.9))
    for run in data["runs"]:
        del run["files"]
    return data


@pytest.fixture(scope="module")
def three_workers(twelve_cells, tmp_path_factory):
    """Three workers started together on one folder: (the folder, each worker's stdout)."""
    out = tmp_path_factory.mktemp("three") / "out"
    command = [str(BIN / "kvbench"), "sweep", str(twelve_cells), "--out", str(out)]
    workers = [
        subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)
    ]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), [err[-2000:] for _, err in outputs]
    return out, [stdout for stdout, _ in outputs]


@pytest.mark.slow
def test_three_workers_on_one_folder_run_every_cell_exactly_once(three_workers):
    out, stdouts = three_workers
    folders = cell_folders(out)
    assert len(folders) == 12
    for folder in folders:  # counted from the cells' own records
        assert events(folder) == ["start", "done"], folder
    counts = [int(stdout.split(" cell(s) run by this worker")[0].split()[-1]) for stdout in stdouts]
    assert sum(counts) == 12 and sum(count > 0 for count in counts) >= 2, counts  # the work was shared


@pytest.mark.slow
def test_a_killed_worker_s_cell_is_run_again_once_its_claim_expires(twelve_cells, three_workers, tmp_path):
    """The first worker claims as a lost node would (its process cannot be looked up from another host) and is
    SIGKILLed in the middle of its first cell; a second worker waits out the claim's expiry, runs the cell, and the
    table equals that of a sweep whose every cell ran once, undisturbed (the three workers' folder)."""
    expiry = "6"
    out = tmp_path / "out"
    command = [str(BIN / "kvbench"), "sweep", str(twelve_cells), "--out", str(out), "--claim-expiry", expiry]
    first = subprocess.Popen(
        command,
        env={**ENV, "KVBENCH_HOST": "lost-node"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not list(out.glob(f"*/{claims.CLAIM}")) and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # its claim is still there: no results yet (the model was loading)
    first.wait()
    [claimed] = [p.parent for p in out.glob(f"*/{claims.CLAIM}")]
    assert not (claimed / claims.RESULTS).exists()
    killed_at = time.time()

    second = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    records = claims.attempts(claimed)
    assert [r["event"] for r in records] == ["start", "expired", "start", "done"]
    assert records[1]["host"] == "lost-node" and records[2]["time"] >= killed_at + float(expiry) - 1.5
    assert all(events(folder) == ["start", "done"] for folder in cell_folders(out) if folder != claimed)
    assert board_json(out) == board_json(three_workers[0])


@pytest.mark.slow
def test_the_local_executor_runs_a_sweep_to_completion(tmp_path):
    config = grid(tmp_path / "sweep.yaml", [32])  # 4 cells: what is tested is the launch, not the grid
    out = tmp_path / "out"
    env = {key: value for key, value in ENV.items() if key != "OMP_NUM_THREADS"}  # the launcher shares the cores
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    done = subprocess.run(
        [str(BIN / "kvbench"), "sweep", str(config), "--out", str(out), "--executor", "local", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"2 local worker(s) started (no GPU), {threads} CPU thread(s) each" in done.stdout
    assert f"{out}: 4 cells: 4 done, 0 running, 0 failed, 0 pending" in done.stdout
    assert all(events(folder) == ["start", "done"] for folder in cell_folders(out))
    logs = list((out / ".submitit").glob("*_0_log.out"))
    assert len(logs) == 2  # submitit's own job files, one per worker
    assert all(f"worker: {threads} CPU thread(s)" in log.read_text() for log in logs)
    ran = [int(line.split(" ran ")[1].split()[0]) for line in done.stdout.splitlines() if " ran " in line]
    assert len(ran) == 2 and sum(ran) == 4, done.stdout
