"""`kvbench sweep CONFIG.yaml`: a grid of models x methods x knob values x tasks x context lengths x chunk
sizes, run in-process through lm-eval's Python API, one lm-eval results file per cell.

Each cell has a folder `OUT/<method>-<hash>/`, the hash a stable digest of the cell's configuration, holding
`config.json` and, once the cell is done, `results.json`. Both are written to a temporary file then renamed
(`os.replace` is atomic), so a sweep killed at any moment leaves either a complete results file or none:
a rerun skips the cells with one and redoes the rest. Each model is loaded once for all its cells; the
method, chunk size and footprint tally of the backend are swapped per cell.

The config (see examples/sweep_tiny.yaml, examples/sweep_paper.yaml):

    models: [PATH_OR_HUB_NAME, ...]
    methods:                       # each: a name, fixed params, and optionally a knob with its values
      - name: full
      - name: streamingllm
        params: {sink: 4}
        knob: window               # default: the method's registered knob
        values: [16, 64]
        query_modes: [aware]       # default: the grid's query_modes
    tasks: [kvbench_synth_recall, ...]
    context_lengths: [1024]
    chunk_sizes: [256]
    query_modes: [aware, agnostic] # default [aware]: agnostic prefills and evicts the context before the question
    metadata: {num_samples: 2}     # more lm-eval --metadata for the tasks
    model_args: {dtype: auto}      # more backend arguments (device, dtype, attn, max_length)
    limit: null                    # lm-eval --limit
    launch: {workers: 8, partition: gpu, gpus_per_worker: 1, time_limit: 1440}   # --executor's defaults
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
import shlex
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from filelock import FileLock

from kvbench import claims
from kvbench.files import write_atomically
from kvbench.settings import DEFAULT_RETRIES, DEFAULT_THRESHOLD

GRID_KEYS = {
    "models",
    "methods",
    "tasks",
    "context_lengths",
    "chunk_sizes",
    "query_modes",
    "metadata",
    "model_args",
    "limit",
    "launch",  # --executor's options (kvbench/launch.py), not part of the grid
}


@dataclass(frozen=True)
class Cell:
    model: str
    method: str
    params: dict  # the method's parameters, knob value included
    task: str
    context_length: int
    chunk_size: int
    metadata: dict
    model_args: dict
    limit: int | float | None
    # The parameter this cell's method entry varies (recorded for the scorer, which draws one curve per knob).
    # It says how cells relate, not what a cell runs: it is not part of the key, so results stay where they are.
    knob: str | None = dataclasses.field(default=None, compare=False)
    query: str = "aware"  # the backend's query mode (aware: the question is prefilled with its context)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        """A stable digest of the configuration: the same cell has the same folder on any machine and rerun.
        (`query` enters it only when agnostic, so that the cells of sweeps made before it keep their folders.)"""
        run = {k: v for k, v in self.as_dict().items() if k != "knob" and not (k == "query" and v == "aware")}
        return hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()[:16]

    def folder(self, out: Path) -> Path:
        return out / f"{self.method}-{self.key}"

    def describe(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.params.items())
        return (
            f"{Path(self.model).name} {self.method}{'(' + params + ')' if params else ''} {self.task} "
            f"ctx={self.context_length} chunk={self.chunk_size}"
            + (f" query={self.query}" if self.query != "aware" else "")
        )

    def task_metadata(self) -> dict:
        # The tasks measure lengths with the evaluated model's tokenizer; with a model instance lm-eval does
        # not pass --model_args on, so `pretrained` goes in the metadata.
        return {**self.metadata, "context_length": self.context_length, "pretrained": self.model}

    def lm_eval_command(self, out: Path) -> str:
        model_args = {
            "pretrained": self.model,
            "method": self.method,
            **self.params,
            "chunk_size": self.chunk_size,
            **self.model_args,
        }
        if self.query != "aware":
            model_args["query"] = self.query
        args = [
            "lm_eval",
            "--model",
            "kvbench",
            "--model_args",
            ",".join(f"{k}={v}" for k, v in model_args.items()),
            "--tasks",
            self.task,
            "--metadata",
            json.dumps({**self.metadata, "context_length": self.context_length}),
            "--output_path",
            str(self.folder(out)),
        ]
        if self.limit is not None:
            args += ["--limit", str(self.limit)]
        return shlex.join(args)


def load_config(path) -> dict:
    config = yaml.safe_load(Path(path).read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a sweep config is a YAML mapping (see examples/sweep_tiny.yaml)")
    unknown = set(config) - GRID_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; a sweep config takes {sorted(GRID_KEYS)}")
    for key in ("models", "methods", "tasks", "context_lengths", "chunk_sizes"):
        if not isinstance(config.get(key), list) or not config[key]:
            raise ValueError(f"{path}: '{key}' must be a non-empty list")
    from kvbench.settings import QUERY_MODES

    modes = config.setdefault("query_modes", ["aware"])
    if not isinstance(modes, list) or not modes or any(m not in QUERY_MODES for m in modes):
        raise ValueError(f"{path}: 'query_modes' must be a non-empty list of {', '.join(QUERY_MODES)}; got {modes!r}")
    for entry in config["methods"]:  # a method's own modes, e.g. agnostic only where the method reads the question
        own = entry.get("query_modes", modes) if isinstance(entry, dict) else modes
        if not isinstance(own, list) or not own or any(m not in QUERY_MODES for m in own):
            raise ValueError(
                f"{path}: method {entry.get('name')!r}: 'query_modes' must be a non-empty list of "
                f"{', '.join(QUERY_MODES)}; got {own!r}"
            )
    if "query" in (config.get("model_args") or {}):
        raise ValueError(f"{path}: give the query mode as query_modes: [...], not in model_args")
    return config


def cells(config: dict) -> list[Cell]:
    """The grid, in a fixed order: by model (loaded once), then context length, chunk size, query mode (the grid's,
    then any other that a method entry names), method, knob value, task."""
    from kvbench.plugins import method_class

    entries = [{"name": entry} if isinstance(entry, str) else entry for entry in config["methods"]]
    grid_modes = config.get("query_modes", ["aware"])
    modes = list(dict.fromkeys([*grid_modes, *(m for entry in entries for m in entry.get("query_modes", []))]))
    grid = []
    for model, context_length, chunk_size, query in itertools.product(
        config["models"], config["context_lengths"], config["chunk_sizes"], modes
    ):
        for entry in entries:
            if "name" not in entry:
                raise ValueError(f"a method entry needs a name; got {entry!r}")
            if query not in entry.get("query_modes", grid_modes):
                continue
            fixed = dict(entry.get("params") or {})
            values = entry.get("values")
            knob = entry.get("knob") or method_class(entry["name"]).knob
            if values and not knob:
                raise ValueError(f"method {entry['name']!r} has values but no knob to set them on")
            settings = [{**fixed, knob: v} for v in values] if values else [fixed]
            for params in settings:
                for task in config["tasks"]:
                    grid.append(
                        Cell(
                            str(model),
                            entry["name"],
                            params,
                            task,
                            int(context_length),
                            int(chunk_size),
                            dict(config.get("metadata") or {}),
                            dict(config.get("model_args") or {}),
                            config.get("limit"),
                            knob if values else None,
                            query,
                        )
                    )
    return grid


def shard(grid: list[Cell], spec: str | None) -> list[Cell]:
    """`i/n` (0 <= i < n): every n-th cell from the i-th, so each machine gets a share of every model."""
    if not spec:
        return grid
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes i/n (e.g. 0/4); got {spec!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard i/n needs 0 <= i < n; got {spec!r}")
    return grid[i::n]


def is_done(cell: Cell, out: Path) -> bool:
    return (cell.folder(out) / claims.RESULTS).is_file()


GRID = "grid.json"  # every cell a sweep into this folder has asked for (refined ones included): what is pending


def record_grid(out: Path, grid: list[Cell], retries: int) -> None:
    """Add `grid` to OUT/grid.json (several configs may share a folder, as kvbench-tiny's do), so that the folder
    alone says what is done, running, failed and pending (`kvbench sweep --status`)."""
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / ".grid.lock"), timeout=claims.LOCK_TIMEOUT):
        known = read_grid(out)
        cells_by_key = {cell.key: cell for cell in known.cells} if known else {}
        cells_by_key.update({cell.key: cell for cell in grid if cell.key not in cells_by_key})
        record = {"retries": retries, "cells": [{**c.as_dict(), "key": c.key} for c in cells_by_key.values()]}
        write_atomically(out / GRID, json.dumps(record, indent=1))


@dataclass(frozen=True)
class Grid:
    retries: int
    cells: list[Cell]


def read_grid(out: Path) -> Grid | None:
    """The folder's grid, or None for a folder without one (made by an older kvbench, or not a sweep's)."""
    path = Path(out) / GRID
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        grid = [Cell(**{k: v for k, v in row.items() if k != "key"}) for row in data["cells"]]
        return Grid(int(data["retries"]), grid)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a sweep's grid file ({error})") from None


def run_sweep(
    config_path,
    out,
    shard_spec: str | None = None,
    dry_run: bool = False,
    print_fn=print,
    retries: int = DEFAULT_RETRIES,
    expiry: float = claims.DEFAULT_EXPIRY,
) -> list[Cell]:
    """Run (or, dry, print) this shard's cells; return the cells this worker ran."""
    out = Path(out)
    todo = shard(cells(load_config(config_path)), shard_spec)
    if dry_run:
        for cell in todo:
            print_fn(("# done: " if is_done(cell, out) else "") + cell.lm_eval_command(out))
        return []
    check_retries(retries)
    record_grid(out, todo, retries)
    return run_cells(todo, out, print_fn, retries=retries, expiry=expiry)


def check_retries(retries) -> None:
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"--retries must be an integer >= 0 (retries after a cell's first failure); got {retries!r}")


def run_cells(
    todo: list[Cell], out: Path, print_fn=print, retries: int = DEFAULT_RETRIES, expiry: float = claims.DEFAULT_EXPIRY
) -> list[Cell]:
    """Claim and run the pending cells of `todo`, in order, until none is left (kvbench.claims): cells that other
    workers run are left to them, and waited for while they run, so that a cell whose worker dies (its claim
    expires) is run by a survivor. A cell that raises is recorded in its folder and tried again up to `retries`
    times; the worker goes on. Returns the cells this worker ran to completion."""
    import sys

    from rich.console import Console

    console = Console(file=sys.stderr)  # this stream, not the one the cells' bars are sent away to
    report = _TerminalProgress(console) if console.is_terminal else _LogProgress(print_fn)
    team = _Team.of_this_process(todo)
    done_before = sum(is_done(c, out) for c in todo)
    ran: list[Cell] = []
    with report.running(total=len(todo), done=done_before) as advance, _quiet_cells():
        runner = None
        while True:
            claim, index = None, None
            if team.leads:
                claim, index = _claim_next(todo, out, retries, expiry)
            index = team.agree(index)
            if index == _WAIT:
                time.sleep(min(30.0, expiry / 12))
                continue
            if index is None:
                break
            cell = todo[index]
            if runner is None or runner.model_name != cell.model:
                runner = CellRunner(cell)  # models come in grid order: each is loaded once
            advance(cell, before=True)
            started = time.perf_counter()
            try:
                if claim is None:  # a data-parallel follower: rank 0 holds the claim and writes the files
                    runner.evaluate(cell)
                    continue
                with claims.kept_alive(claim, expiry):
                    results = evaluate_cell(runner, cell, out)
                seconds = time.perf_counter() - started
                if claims.commit(claim, functools.partial(write_cell, cell.folder(out), cell, results), seconds):
                    ran.append(cell)
                    advance(cell, seconds=seconds)
                else:
                    print_fn(f"sweep: {cell.describe()}: another worker took this cell over; its results stand")
            except Exception as error:  # recorded; the worker goes on with the next cell
                if claim is None:
                    continue
                failures = claims.record_failure(claim, error)
                what = "will be retried" if failures <= retries else f"failed {failures} time(s): given up"
                print_fn(
                    f"sweep: {cell.describe()}: {type(error).__name__}: {error} ({what}; traceback in "
                    f"{cell.folder(out) / claims.ERROR})"
                )
            except BaseException:  # interrupted: the cell is pending again at once, not after the claim's expiry
                if claim is not None:
                    claims.release(claim)
                raise
    return ran


_WAIT = "wait"  # every pending cell is running elsewhere: wait for them to finish, or for a claim to expire


def _claim_next(todo: list[Cell], out: Path, retries: int, expiry: float):
    """(claim, index) of the first pending cell this worker could claim; (None, _WAIT) when the only cells left
    run elsewhere; (None, None) when nothing is left to run (done, or failed past its retries)."""
    running = False
    for index, cell in enumerate(todo):
        found = claims.state(cell.folder(out), retries, expiry)
        if found.status == "running":
            running = True
        if found.status != "pending":
            continue
        claim = claims.try_claim(cell.folder(out), retries, expiry)
        if claim is not None:
            return claim, index
        running = True  # claimed by another worker between the look and the claim
    return None, (_WAIT if running else None)


class _Team:
    """The processes of one worker: one, or a data-parallel group (torchrun / accelerate launch) that runs every
    cell together. Rank 0 claims and tells the others which cell comes next."""

    def __init__(self, group=None):
        self.group = group
        self.leads = group is None or _rank() == 0

    @classmethod
    def of_this_process(cls, todo: list[Cell]) -> _Team:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch
        from accelerate import PartialState

        # The backend's model loading makes the same state (kvbench.lmeval.loading.Processes); made here first so
        # that the processes can agree on the first cell before any model is loaded.
        devices = {str((cell.model_args or {}).get("device", "")) for cell in todo}
        PartialState(cpu=devices == {"cpu"} or not torch.cuda.is_available())
        return cls(torch.distributed.new_group(backend="gloo"))

    def agree(self, choice):
        if self.group is None:
            return choice
        import torch

        message = [choice]
        torch.distributed.broadcast_object_list(message, src=0, group=self.group)
        return message[0]


def _rank() -> int:
    import torch

    return torch.distributed.get_rank() if torch.distributed.is_initialized() else int(os.environ.get("RANK", "0"))


def status(out) -> str:
    """`kvbench sweep --status OUT`: done / running (host, age) / failed / pending counts, and an ETA."""
    out = Path(out)
    grid = read_grid(out)
    if grid is None:
        raise ValueError(f"{out}: no {GRID} (not a sweep folder, or made by a kvbench older than claimed cells)")
    now = time.time()
    by_status: dict[str, list] = {"done": [], "running": [], "failed": [], "pending": []}
    seconds = []
    for cell in grid.cells:
        found = claims.state(cell.folder(out), grid.retries, now=now)
        by_status[found.status].append((cell, found))
        seconds += [r["seconds"] for r in claims.attempts(cell.folder(out)) if r.get("event") == "done"]
    lines = [
        f"{out}: {len(grid.cells)} cells: "
        + ", ".join(f"{len(by_status[s])} {s}" for s in ("done", "running", "failed", "pending"))
    ]
    for cell, found in by_status["running"]:
        age = _clock(now - float(found.claim["started"]))
        lines.append(f"  running  {cell.describe()} on {found.claim['host']} (pid {found.claim['pid']}) for {age}")
    for cell, found in by_status["failed"]:
        lines.append(
            f"  failed   {cell.describe()} after {found.failures} attempt(s): {found.error['error']} "
            f"({cell.folder(out) / claims.ERROR})"
        )
    left = len(by_status["running"]) + len(by_status["pending"])
    if left and seconds:
        workers = max(1, len({(f.claim["host"], f.claim["pid"]) for _, f in by_status["running"]}))
        mean = sum(seconds) / len(seconds)
        lines.append(
            f"ETA {_clock(mean * left / workers)} at {workers} worker(s) ({mean:.1f} s a cell, from "
            f"{len(seconds)} finished)"
        )
    return "\n".join(lines)


def unfinished(out) -> tuple[list[str], list[str]]:
    """(failed, missing): the grid's cells of `out` without results, described; ([], []) without a grid file."""
    grid = read_grid(out)
    if grid is None:
        return [], []
    failed, missing = [], []
    for cell in grid.cells:
        found = claims.state(cell.folder(Path(out)), grid.retries)
        if found.status == "failed":
            failed.append(f"{cell.describe()} ({found.error['error']})")
        elif found.status != "done":
            missing.append(f"{cell.describe()} ({found.status})")
    return failed, missing


# ---- spending samples where they decide ----


def refine(
    config_path,
    out,
    width: float,
    budget: int,
    threshold: float = DEFAULT_THRESHOLD,
    level: float = 0.95,
    replicates: int = 2000,
    seed: int = 0,
    print_fn=print,
    retries: int = DEFAULT_RETRIES,
    expiry: float = claims.DEFAULT_EXPIRY,
) -> list[Cell]:
    """After the grid: where a curve crosses its threshold between two knob values and either its critical
    footprint's interval or the footprint between those two settings is wider than `width` (a share of full
    attention's footprint, e.g. 0.05: the interval is conditional on the grid, so a crossing between a setting
    where every sample fails and one where every sample passes has a narrow interval and a wide step), add the knob
    value half-way between them, for every task of the category, and run those cells; until nothing is too wide,
    no value is left between, a curve stops moving (a knob value that lands on an existing setting's footprint), or
    `budget` cells have been added. Each added cell is an ordinary cell (a folder, resumable): rerun, the same
    results make the same choices and the cells already done are skipped. Listed in OUT/refined.yaml."""
    from kvbench import scoring

    if not 0 < width < 1:
        raise ValueError(f"--refine takes an interval width in (0, 1) (a share of full's footprint); got {width}")
    if budget < 1:
        raise ValueError(f"--refine-budget must be at least 1 cell; got {budget}")
    out = Path(out)
    grid = cells(load_config(config_path))
    added: list[Cell] = []
    seen: dict[tuple, tuple] = {}  # curve -> (critical, interval) when it was last refined
    stuck: set[tuple] = set()
    while len(added) < budget:
        known = {cell.folder(out) / "results.json": cell for cell in grid + added}
        runs = scoring.load_runs([path for path in known if path.is_file()])
        with _quiet_warnings():
            boards = scoring.score_runs(runs, threshold, level, replicates, seed)
        proposals = _refinements(boards, known, width)
        for curve, state, _ in proposals:  # refined before and nothing moved: the knob gives no new footprint there
            if seen.get(curve) == state:
                stuck.add(curve)
        proposed = [
            (curve, state, cell)
            for curve, state, cell in proposals
            if curve not in stuck and cell.folder(out) / "results.json" not in known
        ][: budget - len(added)]
        if not proposed:
            break
        seen.update({curve: state for curve, state, _ in proposed})
        print_fn(
            f"sweep: refining: {len(proposed)} cell(s) at knob values between the last failing and the first "
            f"passing setting of curves still wider than {width:g}"
        )
        added += [cell for _, _, cell in proposed]
        write_atomically(out / "refined.yaml", yaml.safe_dump([cell.as_dict() for cell in added], sort_keys=False))
        record_grid(out, [cell for _, _, cell in proposed], retries)
        run_cells([cell for _, _, cell in proposed], out, print_fn, retries=retries, expiry=expiry)
    return added


def _refinements(boards, known: dict[Path, Cell], width: float) -> list[tuple[tuple, tuple, Cell]]:
    """(curve, its critical footprint and interval now, a cell) for the cells that halve the knob step where a
    curve crosses its threshold too roughly."""
    proposed: dict[str, tuple] = {}
    for board in boards:
        for category, cb in board.categories.items():
            for label, critical in cb.critical.items():
                interval = cb.interval.get(label)
                if critical.mark or interval is None:
                    continue  # censored: there is no failing and passing setting to go between
                points = sorted((p for p in cb.points if p.method == label), key=lambda p: p.footprint)
                failing = [i for i, p in enumerate(points) if p.score < cb.target]
                if not failing or failing[-1] + 1 >= len(points):
                    continue
                below, above = points[failing[-1]], points[failing[-1] + 1]
                if max(interval.high - interval.low, above.footprint - below.footprint) <= width:
                    continue  # narrow enough
                knobs = [k for k in below.params if below.params[k] != above.params.get(k)]
                value = _between(below.params[knobs[0]], above.params[knobs[0]]) if len(knobs) == 1 else None
                if value is None:
                    continue
                curve = (board.name, category, label)
                state = (critical.value, interval.low, interval.high)
                for path in below.files:
                    cell = known.get(Path(path))
                    if cell is not None:
                        new = dataclasses.replace(cell, params={**cell.params, knobs[0]: value}, knob=knobs[0])
                        proposed.setdefault(new.key, (curve, state, new))
    return list(proposed.values())


def _between(a, b):
    """Half-way between two knob values, of their type; None where no value of that type lies strictly between."""
    if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool):
        middle = (a + b) // 2
        return middle if min(a, b) < middle < max(a, b) else None
    middle = float(f"{(a + b) / 2:.6g}")
    return middle if min(a, b) < middle < max(a, b) else None


@contextmanager
def _quiet_warnings():
    """The refinement scores a sweep in progress: a category its baseline has not reached yet is no news."""
    import warnings

    from kvbench.scoring import ResultFileWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultFileWarning)
        yield


def progress_columns():
    """The sweep's bar: counts, elapsed time and ETA first, the cell last (`fit_cell` cuts it to the width left)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return (
        TextColumn("sweep"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
    )


PROGRESS_WIDTH = 50  # what the columns before the cell take, at most (counts up to 9999/9999, hours)


def fit_cell(description: str, width: int) -> str:
    room = max(10, width - PROGRESS_WIDTH)
    return description if len(description) <= room else description[: room - 1] + "…"


class _TerminalProgress:
    def __init__(self, console):
        self.console = console

    @contextmanager
    def running(self, total: int, done: int):
        from rich.progress import Progress

        with Progress(*progress_columns(), console=self.console) as progress:
            bar = progress.add_task("", total=total, completed=done)

            def advance(cell, before=False, seconds=None):
                if before:
                    progress.update(bar, description=fit_cell(cell.describe(), self.console.width))
                else:
                    progress.advance(bar)

            yield advance
            progress.update(bar, description="done")


class _LogProgress:
    """Not a terminal (a log file, CI): one line per cell as it finishes, with the count and an ETA."""

    def __init__(self, print_fn):
        self.print = print_fn

    @contextmanager
    def running(self, total: int, done: int):
        began, ran = time.perf_counter(), 0
        self.print(f"sweep: {total} cells, {done} already done, {total - done} to run")

        def advance(cell, before=False, seconds=None):
            nonlocal done, ran
            if before:
                return
            done, ran = done + 1, ran + 1
            elapsed = time.perf_counter() - began
            eta = elapsed / ran * (total - done)
            self.print(
                f"sweep: [{done}/{total}] {cell.describe()}: {seconds:.1f} s "
                f"(elapsed {_clock(elapsed)}, ETA {_clock(eta)})"
            )

        yield advance


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


class _CustomKwargsNotice(logging.Filter):
    """lm-eval tells, for every task built from a Python generator, that --metadata can carry custom kwargs:
    one line per cell, no news in a sweep (whose config sets them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


@contextmanager
def _quiet_cells():
    """No per-cell news: lm-eval's notice about custom kwargs, and the per-cell progress bars (lm-eval's and the
    backend's tqdm bars, which pass `disable` themselves, so TQDM_DISABLE does not reach them); the sweep shows its
    own progress. Warnings and errors still show."""
    import tqdm

    logger, notice = logging.getLogger("lm_eval.api.task"), _CustomKwargsNotice()
    logger.addFilter(notice)
    original = tqdm.tqdm.__init__

    def disabled(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "disable": True})

    tqdm.tqdm.__init__ = disabled
    try:
        yield
    finally:
        tqdm.tqdm.__init__ = original
        logger.removeFilter(notice)


class CellRunner:
    """One loaded model (a KVBenchLM) and lm-eval's task index, reused by every cell of that model."""

    def __init__(self, cell: Cell):
        from kvbench.lmeval.hook import install

        install()  # kvbench's tasks in lm-eval's index, also without the .pth hook (editable installs)
        from lm_eval.tasks import TaskManager

        from kvbench.lmeval.backend import KVBenchLM

        self.model_name = cell.model
        self.lm = KVBenchLM(pretrained=cell.model, chunk_size=cell.chunk_size, **cell.model_args)
        self._managers: dict[str, TaskManager] = {}

    def task_manager(self, cell: Cell):
        """lm-eval gives tasks the metadata of the TaskManager that builds them (simple_evaluate's `metadata`
        only reaches a manager it makes itself, indexing every task each time): one per distinct metadata."""
        from lm_eval.tasks import TaskManager

        key = json.dumps(cell.task_metadata(), sort_keys=True)
        if key not in self._managers:
            self._managers[key] = TaskManager(metadata=cell.task_metadata())
        return self._managers[key]

    def evaluate(self, cell: Cell) -> dict:
        import lm_eval

        # Reconfigure the backend for this cell through the checked entry point its constructor uses.
        self.lm.configure(cell.method, cell.chunk_size, cell.query, **cell.params)
        # Every cell keeps its per-sample rows (kvbench.lmeval.samples): compact ones, or lm-eval's whole rows with
        # trace=true in model_args (they carry the traces). run_cell writes them.
        return lm_eval.simple_evaluate(
            model=self.lm,
            tasks=[cell.task],
            task_manager=self.task_manager(cell),
            metadata=cell.task_metadata(),
            limit=cell.limit,
            log_samples=self.lm.trace,
        )


def evaluate_cell(runner: CellRunner, cell: Cell, out: Path) -> dict | None:
    """The cell's lm-eval results (None in a data-parallel process other than rank 0, which gets them all)."""
    folder = cell.folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "config.json", json.dumps(cell.as_dict(), indent=1, sort_keys=True))
    return runner.evaluate(cell)


def write_cell(folder: Path, cell: Cell, results: dict) -> Path:
    """The per-sample rows, then the results file: its presence marks the cell done."""
    from lm_eval.utils import handle_non_serializable

    from kvbench.lmeval import samples

    results["config"]["kvbench_sweep"] = {**cell.as_dict(), "key": cell.key}
    per_task = results.pop("samples", None) or results.pop(samples.RESULTS_KEY, None) or {}
    for task, rows in per_task.items():
        samples.write_jsonl(folder / f"samples_{task}.jsonl", rows)
    path = folder / claims.RESULTS
    write_atomically(path, json.dumps(results, indent=1, default=handle_non_serializable))
    return path


def run_cell(runner: CellRunner, cell: Cell, out: Path) -> Path | None:
    """Run one cell unclaimed and write its files (for a caller that owns the folder)."""
    results = evaluate_cell(runner, cell, out)
    return None if results is None else write_cell(cell.folder(out), cell, results)
