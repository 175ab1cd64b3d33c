"""`kvbench sweep`: the grid, sharding, dry-run, and resuming a sweep killed with SIGKILL; the round trip
from real lm-eval result files (written by the sweep through lm-eval's Python API) to the leaderboard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from checkpoints import save_tiny_checkpoint

from kvbench import leaderboard, scoring
from kvbench.sweep import cells, load_config, run_sweep, shard

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
WINDOWS = [16, 64, 256]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    checkpoint = save_tiny_checkpoint(folder / "tiny")
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "models": [str(checkpoint)],
        "methods": [{"name": "full"}, {"name": "streamingllm", "params": {"sink": 4}, "values": WINDOWS}],
        "tasks": ["kvbench_synth_recall"], "context_lengths": [1024], "chunk_sizes": [256],
        "metadata": {"num_samples": 2}, "model_args": {"device": "cpu"},
    }))
    return path


def test_grid_and_stable_cell_folders(config):
    grid = cells(load_config(config))
    assert [(c.method, c.params) for c in grid] == [("full", {})] + [("streamingllm", {"sink": 4, "window": w})
                                                                      for w in WINDOWS]
    assert [c.key for c in grid] == [c.key for c in cells(load_config(config))]  # stable across reads
    assert len({c.key for c in grid}) == len(grid)


def test_shards_split_the_grid_deterministically(config):
    grid = cells(load_config(config))
    parts = [shard(grid, f"{i}/3") for i in range(3)]
    assert sorted(c.key for part in parts for c in part) == sorted(c.key for c in grid)
    assert parts == [shard(grid, f"{i}/3") for i in range(3)]
    for bad in ("3/3", "x", "1-2"):
        with pytest.raises(ValueError, match="--shard"):
            shard(grid, bad)


def test_dry_run_prints_the_lm_eval_command_of_every_cell(config, tmp_path):
    lines = []
    run_sweep(config, tmp_path, dry_run=True, print_fn=lines.append)
    assert len(lines) == 4 and all(line.startswith("lm_eval --model kvbench --model_args pretrained=") for line in lines)
    assert "method=streamingllm,sink=4,window=64,chunk_size=256,device=cpu" in lines[2]
    assert "--tasks kvbench_synth_recall" in lines[0] and "context_length" in lines[0]
    assert not list(tmp_path.iterdir())  # nothing run


def test_bad_config_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("models: [m]\nmethods: []\n")
    with pytest.raises(ValueError, match="'methods' must be a non-empty list"):
        load_config(path)
    path.write_text("models: [m]\nmodel: x\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['model'\]"):
        load_config(path)


def board_json(folder) -> dict:
    """The leaderboard's figures, without file paths (which differ between sweep folders)."""
    data = json.loads(leaderboard.render(scoring.score_runs(scoring.load_runs([folder])), "json", 0.9))
    for run in data["runs"]:
        del run["files"]
    return data


@pytest.fixture(scope="module")
def uninterrupted(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert len(run_sweep(config, out)) == 4
    finally:
        torch.set_num_threads(threads)
    return out


def test_round_trip_from_real_lm_eval_results_to_the_leaderboard(uninterrupted):
    runs = scoring.load_runs([uninterrupted])
    assert len(runs) == 4
    for run in runs:  # what the backend measured is what the scorer reads
        data = json.loads(Path(run.path).read_text())
        [task] = run.tasks
        assert task.footprint == data["config"]["kvbench"]["tasks"]["kvbench_synth_recall"]["kv_footprint"]
        assert task.score == data["results"]["kvbench_synth_recall"]["score,none"]
        assert task.category == "recall" and task.context_length == 1024
    [board] = scoring.score_runs(runs)
    recall = board.categories["recall"]
    footprints = [p.footprint for p in recall.points]
    assert footprints == sorted(footprints) and footprints[0] < footprints[-1] < 1.0  # window 16 < 64 < 256
    assert [p.params["window"] for p in recall.points] == WINDOWS
    expected = scoring.critical_footprint([(p.footprint, p.score) for p in recall.points], recall.target)
    assert recall.critical["streamingllm"].value == expected.value
    assert "| streamingllm |" in leaderboard.render([board], "md", 0.9)


def test_sweep_killed_part_way_resumes_without_redoing_cells(config, uninterrupted, tmp_path):
    out = tmp_path / "out"
    command = [str(BIN / "kvbench"), "sweep", str(config), "--out", str(out)]
    sweep = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list(out.glob("*/results.json")) and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.2)
    sweep.send_signal(signal.SIGKILL)  # mid-way through the next cell
    sweep.wait()
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*/results.json")}
    assert 1 <= len(finished) < 4, "the kill should land after the first cell and before the last"

    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{4 - len(finished)} cell(s) run" in done.stdout
    for path, stamp in finished.items():  # finished cells untouched
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp
    assert len(list(out.glob("*/results.json"))) == 4
    assert not list(out.glob("*/.*.tmp"))
    assert board_json(out) == board_json(uninterrupted)
