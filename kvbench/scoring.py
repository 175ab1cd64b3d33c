"""The critical KV footprint: read lm-eval result files, score each run per task category, find each
method's smallest footprint that keeps `threshold` x full attention's score (DESIGN.md, "Critical KV footprint").

Works on any lm-eval results JSON written with `--model kvbench` (a sweep's `results.json` or a plain
`lm_eval ... --output_path` run's `results_*.json`): the per-task footprints are in
`results["config"]["kvbench"]["tasks"]`, the task categories in `configs[task]["metadata"]["category"]`.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

BASELINE = "full"
AGNOSTIC = " [query-agnostic]"  # ends the curve label of a setting run query-agnostic (query=agnostic)
# What guessing scores on kvbench's tasks where it is above 0 (ICL: one label in n); a baseline no better than
# this is refused. Other tasks: 0 (a baseline of 0 is refused everywhere).
CHANCE = {"kvbench_icl_trec_coarse": 1 / 6, "kvbench_icl_trec_fine": 1 / 50, "kvbench_icl_banking77": 1 / 77,
          "kvbench_icl_clinc150": 1 / 151, "kvbench_icl_nlu": 1 / 68, "kvbench_synth_icl": 1 / 6}
DEFAULT_THRESHOLD = 0.9
DEFAULT_CONTEXT_LENGTH = 131072  # for results that say nothing of their length (lm-eval's own tasks)
# Keys of an lm-eval task result that are not scores.
NOT_SCORES = {"kv_footprint", "kv_peak", "name", "alias", "sample_len", "sample_count"}


class ResultFileWarning(UserWarning):
    """A result file or a setting was left out (malformed, partial, not a kvbench run, missing a task), or a task
    found in several files was averaged."""


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
    knob: str | None = None  # the parameter a sweep varied, when the file records it
    query: str = "aware"  # the backend's query mode (files from before it was recorded ran query-aware)
    tasks: list[TaskResult] = field(default_factory=list)


@dataclass(frozen=True)
class Point:
    """A setting's figures in one category: means over the category's tasks (which may come from several files)."""

    method: str  # the curve's label: method name, plus the fixed parameters that tell its variants apart
    params: dict
    score: float
    footprint: float
    peak: float
    peak_bytes: float
    files: tuple[str, ...]


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
    method = str(kv["method"])
    knob = data["config"].get("kvbench_sweep", {}).get("knob")
    run = Run(str(path), str(kv["model"]), method, _with_defaults(method, dict(kv.get("method_params", {}))),
              int(kv["chunk_size"]), knob, str(kv.get("query", "aware")))
    configs = data.get("configs", {})
    sources = kv.get("data", {})  # the length the task ran at, also when it followed the model's (no --metadata)
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
            task, str(category),
            int(metadata.get("context_length") or sources.get(task, {}).get("context_length") or DEFAULT_CONTEXT_LENGTH),
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
#
# A *setting* is one method with all its parameters fixed, in one query mode: one point of its curve. A sweep
# writes one file per (setting, task), a plain lm_eval run one file per setting with all its tasks; either way a
# setting's point in a category is the mean over the category's tasks, and only over the tasks its baseline ran.

SettingKey = tuple[str, str, str]  # (method, its parameters as canonical JSON, query mode)


def setting_key(run: Run) -> SettingKey:
    return run.method, json.dumps(run.params, sort_keys=True, default=str), run.query


def _describe(key: SettingKey) -> str:
    params = ", ".join(f"{k}={v}" for k, v in json.loads(key[1]).items())
    return f"{key[0]}({params})" + (f" query={key[2]}" if key[2] != "aware" else "")


def baseline_key(query: str = "aware") -> SettingKey:
    """`full` at its default parameters (16-bit KV): full attention with kv_bits 8 or 4 is a curve like any other.
    Full attention keeps everything, so it gives the same logits in both query modes: either mode's run is the
    baseline of both (query-aware's when there are both)."""
    return BASELINE, json.dumps(_with_defaults(BASELINE, {}), sort_keys=True, default=str), query


def split_label(label: str) -> tuple[str, str]:
    """A curve label -> (the label without its mode, the query mode)."""
    return (label.removesuffix(AGNOSTIC), "agnostic") if label.endswith(AGNOSTIC) else (label, "aware")


def curve_labels(runs: list[Run]) -> dict[SettingKey, str]:
    """Label each setting with its curve: the method name plus the fixed parameters that differ between curves of
    that method (e.g. snapkv's schedule). A curve varies one parameter, its knob: the one the results file records
    (a sweep records it), else the one parameter that varies among the method's settings, else the registered knob.
    A method swept along two knobs gives two curves, each label naming its knob."""
    settings: dict[str, dict[SettingKey, dict]] = defaultdict(dict)
    knobs: dict[SettingKey, set] = defaultdict(set)
    base = baseline_key()
    for run in runs:
        key = setting_key(run)
        if key[:2] != base[:2]:
            settings[run.method][key] = run.params
            knobs[key].update([run.knob] if run.knob else [])
    labels = {base: BASELINE, baseline_key("agnostic"): BASELINE}
    for method, params in settings.items():
        varying = sorted({k for p in params.values() for k in p
                          if len({repr(other.get(k)) for other in params.values()}) > 1})
        fallback = varying[0] if len(varying) == 1 else _registered_knob(method)
        knob_of = {key: next(iter(knobs[key])) if len(knobs[key]) == 1 else fallback for key in params}
        named_knob = len(set(knob_of.values())) > 1
        curves: dict[tuple, list[SettingKey]] = defaultdict(list)
        for key, p in params.items():
            # None marks the unused alternative (snapkv's budget when it runs by keep): nothing to tell apart
            fixed = [f"{k}={p.get(k)}" for k in varying if k != knob_of[key] and p.get(k) is not None]
            curves[(*fixed, f"by {knob_of[key]}") if named_knob else tuple(fixed), key[2]].append(key)
        default = json.loads(base[1])
        for (fixed, query), keys in curves.items():
            if method == BASELINE:  # "full" alone would read as the baseline: name what differs from it
                named = {f.split("=")[0] for f in fixed}
                for name in sorted({k for key in keys for k, v in params[key].items() if v != default.get(k)} - named):
                    fixed += (f"{name}=" + "/".join(sorted({str(params[key].get(name)) for key in keys})),)
            label = f"{method} ({', '.join(fixed)})" if fixed else method
            labels.update(dict.fromkeys(keys, label + (AGNOSTIC if query == "agnostic" else "")))
    return labels


def _registered_knob(method: str) -> str | None:
    try:
        from kvbench.plugins import method_class

        return method_class(method).knob
    except Exception:  # noqa: BLE001 - a method from a plugin not installed here: fall back on the data
        return None


def _with_defaults(method: str, params: dict) -> dict:
    """The setting's parameters with the registered method's defaults filled in, so that a file that records
    fewer parameters (an older kvbench) names the same setting."""
    try:
        from kvbench.plugins import method_class

        fields = dataclasses.fields(method_class(method))
    except Exception:  # noqa: BLE001 - a method from a plugin not installed here: take the file's word
        return dict(params)
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    return {**defaults, **params}


def score_runs(runs: list[Run], threshold: float = DEFAULT_THRESHOLD) -> list[GroupBoard]:
    """Group task results by (model, context length, chunk size); per category, make each setting's point from
    its tasks, score it against `full`'s, and find each curve's critical footprint."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    labels = curve_labels(runs)
    base = baseline_key()
    # (model, context length, chunk size) -> category -> setting -> task -> [(result, file)]
    grouped = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    params_of = {}
    for run in runs:
        key = setting_key(run)
        params_of[key] = run.params
        for task in run.tasks:
            grouped[(run.model, task.context_length, run.chunk_size)][task.category][key][task.task].append(
                (task, run.path))
    boards = []
    for (model, context_length, chunk_size), categories in sorted(grouped.items(), key=lambda kv: tuple(map(str, kv[0]))):
        board = GroupBoard(model, context_length, chunk_size, {})
        for category, settings in sorted(categories.items()):
            where = f"{board.name}, category {category!r}"
            if base not in settings and baseline_key("agnostic") in settings:
                settings[base] = settings.pop(baseline_key("agnostic"))  # the same logits in both modes
                params_of[base] = params_of[baseline_key("agnostic")]
            settings.pop(baseline_key("agnostic"), None)  # with both, the query-aware run is the baseline
            if base not in settings:
                raise ValueError(f"no baseline: group {board.name} has no run of method '{BASELINE}' at its default "
                                 f"parameters for category {category!r} (run `full` with the same model, context "
                                 "length and chunk size)")
            tasks = sorted(settings[base])
            points = {}
            for key, per_task in settings.items():
                missing = [t for t in tasks if t not in per_task]
                if missing:
                    _warn(f"{where}: setting {_describe(key)} lacks task(s) {', '.join(missing)} that the baseline "
                          "ran; left out of this category")
                    continue
                extra = sorted(set(per_task) - set(tasks))
                if extra:
                    _warn(f"{where}: task(s) {', '.join(extra)} of setting {_describe(key)} have no baseline run; "
                          "not counted")
                points[key] = _point(labels[key], params_of[key], [per_task[t] for t in tasks], where)
            baseline = points.pop(base).score
            chance = sum(CHANCE.get(task, 0.0) for task in tasks) / len(tasks)
            if baseline <= chance:
                _warn(f"{where}: full attention scores {baseline:.3g}, no better than chance ({chance:.3g}): the model "
                      "cannot do these tasks, so no footprint can keep its score; category left out (is this the "
                      "model and data you meant?)")
                continue
            target = threshold * baseline
            others = sorted(points.values(), key=lambda p: (p.method, p.footprint))
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


def _point(label: str, params: dict, per_task: list[list[tuple[TaskResult, str]]], where: str) -> Point:
    """Means over the tasks; a task found in several files (a rerun) counts once, as the mean of its files."""
    task_means = []
    for results in per_task:
        if len(results) > 1:
            _warn(f"{where}: task {results[0][0].task!r} of one setting is in {len(results)} files "
                  f"({', '.join(path for _, path in results)}); using their mean")
        task_means.append({name: sum(getattr(r, name) for r, _ in results) / len(results)
                           for name in ("score", "footprint", "peak", "peak_bytes")})
    mean = {name: sum(t[name] for t in task_means) / len(task_means) for name in task_means[0]}
    files = tuple(sorted({path for results in per_task for _, path in results}))
    return Point(label, params, mean["score"], mean["footprint"], mean["peak"], mean["peak_bytes"], files)


def _warn(message: str) -> None:
    warnings.warn(message, ResultFileWarning, stacklevel=3)


def parse_categories(pairs: list[str] | None) -> dict[str, str]:
    """`--category TASK=CATEGORY` flags -> {task: category}."""
    mapping = {}
    for pair in pairs or []:
        task, sep, category = pair.partition("=")
        if not sep or not task or not category:
            raise ValueError(f"--category takes TASK=CATEGORY; got {pair!r}")
        mapping[task] = category
    return mapping
