"""The critical KV footprint: read lm-eval result files, score each run per task category, find each
method's smallest footprint that keeps `threshold` x full attention's score (DESIGN.md, "Critical KV footprint").

Works on any lm-eval results JSON written with `--model kvbench` (a sweep's `results.json` or a plain
`lm_eval ... --output_path` run's `results_*.json`): the per-task footprints are in
`results["config"]["kvbench"]["tasks"]`, the task categories in `configs[task]["metadata"]["category"]`.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

BASELINE = "full"
DEFAULT_THRESHOLD = 0.9
DEFAULT_CONTEXT_LENGTH = 131072  # what kvbench tasks use when --metadata gives none
# Keys of an lm-eval task result that are not scores.
NOT_SCORES = {"kv_footprint", "kv_peak", "name", "alias", "sample_len", "sample_count"}


class ResultFileWarning(UserWarning):
    """A result file was left out (malformed, partial, or not a kvbench run)."""


@dataclass(frozen=True)
class TaskResult:
    task: str
    category: str
    context_length: int
    score: float
    footprint: float
    peak: float
    peak_bytes: float


@dataclass
class Run:
    """One lm-eval result file: one model, method setting and chunk size, one or more tasks."""

    path: str
    model: str
    method: str
    params: dict
    chunk_size: int
    tasks: list[TaskResult] = field(default_factory=list)


@dataclass(frozen=True)
class Point:
    """A run's figures in one category: means over the category's tasks."""

    method: str  # the label: method name, plus the fixed parameters that tell its variants apart
    params: dict
    score: float
    footprint: float
    peak: float
    peak_bytes: float
    path: str


@dataclass(frozen=True)
class Critical:
    """`mark` is "" (a crossing), ">" (even the largest run falls short) or "<" (the smallest run passes)."""

    value: float
    mark: str
    peak: float
    peak_bytes: float

    def __str__(self) -> str:
        return f"{self.mark}{100 * self.value:.0f}%"


@dataclass
class CategoryBoard:
    category: str
    baseline: float  # full attention's score
    target: float  # threshold x baseline
    points: list[Point]  # every run but the baseline's, by method then footprint
    critical: dict[str, Critical]  # method label -> its critical footprint


@dataclass
class GroupBoard:
    model: str
    context_length: int
    chunk_size: int
    categories: dict[str, CategoryBoard]

    @property
    def name(self) -> str:
        return f"model={self.model}, context_length={self.context_length}, chunk_size={self.chunk_size}"


# ---- reading result files ----


def find_result_files(paths) -> list[Path]:
    """Files as given; folders searched recursively for lm-eval's `results*.json` (sweeps write `results.json`)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("results*.json") if p.is_file())
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such result file or folder: {path}")
    return found


def load_runs(paths, categories: dict[str, str] | None = None) -> list[Run]:
    """Every readable run; a file that cannot be used is named in a ResultFileWarning and left out."""
    runs = []
    for path in find_result_files(paths):
        try:
            runs.append(read_run(path, categories or {}))
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as error:
            detail = f"missing {error}" if isinstance(error, KeyError) else str(error)
            warnings.warn(f"{path}: left out, not a usable kvbench result file ({detail})", ResultFileWarning,
                          stacklevel=2)
    return runs


def read_run(path, categories: dict[str, str]) -> Run:
    data = json.loads(Path(path).read_text())  # json.JSONDecodeError is a ValueError: a half-written file
    if not isinstance(data, dict) or "results" not in data:
        raise ValueError("no 'results' in it")
    kv = data.get("config", {}).get("kvbench")
    if not kv:
        raise ValueError("no config.kvbench: not run with `--model kvbench`, so no footprint")
    run = Run(str(path), str(kv["model"]), str(kv["method"]), dict(kv.get("method_params", {})),
              int(kv["chunk_size"]))
    configs = data.get("configs", {})
    for task, footprint in kv["tasks"].items():
        if task not in data["results"]:
            raise ValueError(f"task {task!r} has a footprint but no score (a partial file?)")
        metadata = configs.get(task, {}).get("metadata") or {}
        category = categories.get(task) or metadata.get("category")
        if not category:
            warnings.warn(f"{path}: task {task!r} has no category (give one with --category {task}=CATEGORY); "
                          "left out", ResultFileWarning, stacklevel=3)
            continue
        run.tasks.append(TaskResult(
            task, str(category), int(metadata.get("context_length", DEFAULT_CONTEXT_LENGTH)),
            main_score(data["results"][task], task), float(footprint["kv_footprint"]),
            float(footprint["kv_peak"]), float(footprint["kv_peak_bytes"]),
        ))
    if not run.tasks:
        raise ValueError("no task with a category")
    return run


def main_score(metrics: dict, task: str) -> float:
    """kvbench tasks report `score` (their main metric under one name); elsewhere, the first metric listed."""
    scores = {key: value for key, value in metrics.items()
              if "_stderr" not in key and key.split(",")[0] not in NOT_SCORES and isinstance(value, (int, float))}
    for key, value in scores.items():
        if key.split(",")[0] == "score":
            return float(value)
    if not scores:
        raise ValueError(f"task {task!r} has no numeric metric")
    return float(next(iter(scores.values())))


# ---- the critical footprint ----


def critical_footprint(points: list[tuple[float, float]], target: float,
                       peaks: list[tuple[float, float]] | None = None) -> Critical:
    """The smallest footprint x such that the piecewise-linear curve through (footprint, score), sorted by
    footprint, stays >= target from x up to the largest footprint.

    Runs at the same footprint (ties) are averaged into one point: the curve must be a function.
    `peaks` (kv_peak, kv_peak_bytes per point) are interpolated at x the same way.
    """
    if not points:
        raise ValueError("no runs to find a critical footprint in")
    peaks = peaks or [(0.0, 0.0)] * len(points)
    merged = defaultdict(list)
    for (x, y), peak in zip(points, peaks, strict=True):
        merged[x].append((y, *peak))
    xs = sorted(merged)
    rows = [[sum(v[i] for v in merged[x]) / len(merged[x]) for i in range(3)] for x in xs]
    ys = [row[0] for row in rows]
    last = len(xs) - 1
    if ys[last] < target:
        return Critical(xs[last], ">", rows[last][1], rows[last][2])
    # Walk down from the largest footprint to the first point that falls short; the curve crosses after it.
    failing = next((i for i in range(last, -1, -1) if ys[i] < target), None)
    if failing is None:
        return Critical(xs[0], "<", rows[0][1], rows[0][2])
    a, b = failing, failing + 1
    t = (target - ys[a]) / (ys[b] - ys[a])  # ys[a] < target <= ys[b], so 0 < t <= 1
    x = xs[a] + t * (xs[b] - xs[a])
    return Critical(x, "", *(rows[a][i] + t * (rows[b][i] - rows[a][i]) for i in (1, 2)))


# ---- the board ----


def method_labels(runs: list[Run]) -> dict[str, str]:
    """Label each run by its method name plus the parameters that are fixed within a curve but differ
    between curves of that method (e.g. pyramidkv's schedule): one curve per label. The knob (the
    parameter a sweep varies) is the registered method's, else the one parameter that varies."""
    by_method = defaultdict(list)
    for run in runs:
        by_method[run.method].append(run)
    labels = {}
    for method, group in by_method.items():
        varying = sorted({k for r in group for k in r.params if len({repr(o.params.get(k)) for o in group}) > 1})
        knob = _registered_knob(method)
        if knob is None and len(varying) == 1:
            knob = varying[0]
        shown = [k for k in varying if k != knob]
        for run in group:
            extra = ", ".join(f"{k}={run.params.get(k)}" for k in shown)
            labels[run.path] = f"{method} ({extra})" if extra else method
    return labels


def _registered_knob(method: str) -> str | None:
    try:
        from kvbench.plugins import method_class

        return method_class(method).knob
    except Exception:  # noqa: BLE001 - a method from a plugin not installed here: fall back on the data
        return None


def score_runs(runs: list[Run], threshold: float = DEFAULT_THRESHOLD) -> list[GroupBoard]:
    """Group task results by (model, context length, chunk size); per category, score every run against
    `full` and find each method's critical footprint."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    labels = method_labels(runs)
    # (model, context length, chunk size) -> category -> run path -> its tasks in that category
    grouped = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    by_path = {run.path: run for run in runs}
    for run in runs:
        for task in run.tasks:
            grouped[(run.model, task.context_length, run.chunk_size)][task.category][run.path].append(task)
    boards = []
    for (model, context_length, chunk_size), categories in sorted(grouped.items(), key=lambda kv: tuple(map(str, kv[0]))):
        board = GroupBoard(model, context_length, chunk_size, {})
        for category, per_run in sorted(categories.items()):
            points = [_point(by_path[path], labels[path], tasks) for path, tasks in per_run.items()]
            base = [p for p in points if by_path[p.path].method == BASELINE]
            if not base:
                raise ValueError(f"no baseline: group {board.name} has no run of method '{BASELINE}' "
                                 f"for category {category!r} (run `full` with the same model, context length "
                                 "and chunk size)")
            baseline = sum(p.score for p in base) / len(base)
            target = threshold * baseline
            others = sorted((p for p in points if by_path[p.path].method != BASELINE),
                            key=lambda p: (p.method, p.footprint))
            curves = defaultdict(list)
            for p in others:
                curves[p.method].append(p)
            critical = {
                label: critical_footprint([(p.footprint, p.score) for p in ps], target,
                                          [(p.peak, p.peak_bytes) for p in ps])
                for label, ps in curves.items()
            }
            board.categories[category] = CategoryBoard(category, baseline, target, others, critical)
        boards.append(board)
    return boards


def _point(run: Run, label: str, tasks: list[TaskResult]) -> Point:
    def mean(name):
        return sum(getattr(t, name) for t in tasks) / len(tasks)

    return Point(label, run.params, mean("score"), mean("footprint"), mean("peak"), mean("peak_bytes"), run.path)


def parse_categories(pairs: list[str] | None) -> dict[str, str]:
    """`--category TASK=CATEGORY` flags -> {task: category}."""
    mapping = {}
    for pair in pairs or []:
        task, sep, category = pair.partition("=")
        if not sep or not task or not category:
            raise ValueError(f"--category takes TASK=CATEGORY; got {pair!r}")
        mapping[task] = category
    return mapping
