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

from kvbench import leaderboard, scoring
from kvbench.sweep import cells, load_config, run_sweep, shard

BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
WINDOWS = [16, 64, 256]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    path = folder / "sweep.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                # The bundled model: full attention finds the needles (a random model scores 0, and a baseline at chance
                # is refused), so the leaderboard has a category to score.
                "models": ["kvbench-tiny"],
                "methods": [{"name": "full"}, {"name": "streamingllm", "params": {"sink": 4}, "values": WINDOWS}],
                "tasks": ["kvbench_synth_recall"],
                "context_lengths": [1024],
                "chunk_sizes": [256],
                "metadata": {"num_samples": 2},
                "model_args": {"device": "cpu"},
            }
        )
    )
    return path


def test_grid_and_stable_cell_folders(config):
    grid = cells(load_config(config))
    assert [(c.method, c.params) for c in grid] == [("full", {})] + [
        ("streamingllm", {"sink": 4, "window": w}) for w in WINDOWS
    ]
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
    assert len(lines) == 4 and all(
        line.startswith("lm_eval --model kvbench --model_args pretrained=") for line in lines
    )
    assert "method=streamingllm,sink=4,window=64,chunk_size=256,device=cpu" in lines[2]
    assert "--tasks kvbench_synth_recall" in lines[0] and "context_length" in lines[0]
    assert not list(tmp_path.iterdir())  # nothing run


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parent.parent / "examples").glob("sweep_*.yaml")), ids=lambda path: path.name
)
def test_every_shipped_sweep_config_expands_into_cells_whose_settings_the_methods_accept(path):
    """A typo or an out-of-range setting in an examples/ config would otherwise show only as failed cells, hours
    into a sweep."""
    from kvbench import load_method

    grid = cells(load_config(path))
    assert grid
    for cell in grid:
        params = dict(cell.params)
        if "/" in str(params.get("pattern", "")) and not Path(params["pattern"]).exists():
            params["pattern"] = "kvbench-tiny"  # the paper's trained patterns are downloaded by the user (README)
        load_method(cell.method, **params)


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


LOG: list[str] = []  # what the uninterrupted sweep printed (not a terminal: its line per cell)


@pytest.fixture(scope="module")
def uninterrupted(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert len(run_sweep(config, out, print_fn=LOG.append)) == 4
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.slow
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


@pytest.mark.slow
def test_every_cell_keeps_compact_per_sample_rows_that_the_scorer_reads(uninterrupted):
    """Without any flag: each sample's doc_id, metric values under lm-eval's names and footprint; no prompt and no
    response. Their means are the results file's figures, and they give the leaderboard its interval."""
    for folder in (p for p in uninterrupted.iterdir() if p.is_dir()):
        [samples] = folder.glob("samples_*.jsonl")
        assert samples.name == "samples_kvbench_synth_recall.jsonl"
        rows = [json.loads(line) for line in samples.read_text().splitlines()]
        assert [row["doc_id"] for row in rows] == [0, 1]
        assert set(rows[0]) == {
            "doc_id",
            "filter",
            "substring_exact_match",
            "score",
            "kv_footprint",
            "kv_peak",
            "kv_peak_bytes",
            "tokens",
            "requests",
        }
        results = json.loads((folder / "results.json").read_text())
        tally = results["config"]["kvbench"]["tasks"]["kvbench_synth_recall"]
        assert sum(r["kv_footprint"] for r in rows) / 2 == pytest.approx(tally["kv_footprint"], rel=1e-12)
        assert sum(r["score"] for r in rows) / 2 == results["results"]["kvbench_synth_recall"]["score,none"]
    runs = scoring.load_runs([uninterrupted])
    assert all(task.samples is not None and task.n == 2 for run in runs for task in run.tasks)
    [board] = scoring.score_runs(runs)
    assert set(board.categories["recall"].interval) == {"streamingllm"} and board.categories["recall"].n == 2


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_sweep_in_a_log_file_prints_a_line_per_cell_with_its_eta(uninterrupted):
    import re

    assert LOG[0] == "sweep: 4 cells, 0 already done, 4 to run"
    assert [re.match(r"sweep: \[(\d)/4\] ", line)[1] for line in LOG[1:]] == ["1", "2", "3", "4"]
    assert all(re.search(r": \d+\.\d s \(elapsed \d:\d\d:\d\d, ETA \d:\d\d:\d\d\)$", line) for line in LOG[1:])
    assert "streamingllm(sink=4,window=16) kvbench_synth_recall ctx=1024 chunk=256" in LOG[2]


def test_the_terminal_bar_keeps_count_time_and_eta_at_80_columns():
    import io

    from rich.console import Console
    from rich.progress import Progress

    from kvbench.sweep import fit_cell, progress_columns

    cell = (
        "tiny-llama-with-a-long-name snapkv(keep=0.3,recent=64,obs_window=64,schedule=patched) "
        "kvbench_synth_recall ctx=131072 chunk=32768"
    )
    for count in ("3/76", "1234/9999"):
        done, total = map(int, count.split("/"))
        with Progress(*progress_columns(), console=Console(file=io.StringIO()), auto_refresh=False) as progress:
            progress.add_task(fit_cell(cell, 80), total=total, completed=done)
            text = io.StringIO()
            Console(file=text, width=80, color_system=None).print(progress.get_renderable())
        [line] = text.getvalue().splitlines()
        assert f" {count} " in line and " ETA " in line and "0:00:" in line
        assert line.rstrip().endswith("…")  # the cell's name is what gets cut
