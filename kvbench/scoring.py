"""The critical KV footprint: read lm-eval result files, score each run per task category, find each
method's smallest footprint that keeps `threshold` x full attention's score (DESIGN.md, "Critical KV footprint").

Works on any lm-eval results JSON written with `--model kvbench` (a sweep's `results.json` or a plain
`lm_eval ... --output_path` run's `results_*.json`): the per-task footprints are in
`results["config"]["kvbench"]["tasks"]`, the task categories in `configs[task]["metadata"]["category"]`, and each
task's per-sample rows beside the file (kvbench.lmeval.samples), from which kvbench.statistics makes the intervals
and ranks.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kvbench import statistics
from kvbench.lmeval.samples import read_samples, samples_path
from kvbench.settings import DEFAULT_CONTEXT_LENGTH, DEFAULT_THRESHOLD, check_threshold

BASELINE = "full"
AGNOSTIC = " [query-agnostic]"  # ends the curve label of a setting run query-agnostic (query=agnostic)
# What guessing scores on kvbench's tasks where it is above 0 (ICL: one label in n); a baseline no better than
# this is refused. Other tasks: 0 (a baseline of 0 is refused everywhere).
CHANCE = {
    "kvbench_icl_trec_coarse": 1 / 6,
    "kvbench_icl_trec_fine": 1 / 50,
    "kvbench_icl_banking77": 1 / 77,
    "kvbench_icl_clinc150": 1 / 151,
    "kvbench_icl_nlu": 1 / 68,
    "kvbench_synth_icl": 1 / 6,
}
# A result that says nothing of its length (lm-eval's own tasks) ran at the default length.
# Keys of an lm-eval task result that are not scores.
NOT_SCORES = {"kv_footprint", "kv_peak", "name", "alias", "sample_len", "sample_count"}


class ResultFileWarning(UserWarning):
    """A result file or a setting was left out (malformed, partial, not a kvbench run, missing a task), or a task
    found in several files was averaged."""


@dataclass(frozen=True)
class Samples:
    """One task's per-sample results in one file, by document: `units` names each document's resampling unit (its
    context_group in a multi-question task, else the document itself); `footprints` is None when the rows carry none
    (then the task's footprint stands for every sample)."""

    doc_ids: np.ndarray
    units: np.ndarray
    scores: np.ndarray
    footprints: np.ndarray | None


@dataclass(frozen=True)
class TaskResult:
    task: str
    category: str
    context_length: int
    score: float
    footprint: float
    peak: float
    peak_bytes: float
    n: int = 0  # samples (documents) behind the score
    samples: Samples | None = field(default=None, compare=False, repr=False)
    no_samples: str | None = None  # why `samples` is None: the interval's refusal, in one line


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
    n: int = 0  # samples behind the point, summed over the category's tasks
    score_interval: statistics.Interval | None = None  # from the bootstrap replicates, when there are samples
    footprint_interval: statistics.Interval | None = None


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
    n: int = 0  # the baseline's samples, summed over the category's tasks (every interval's curve has the same)
    # From the paired bootstrap (kvbench.statistics), for curves whose every point has per-sample results:
    interval: dict[str, statistics.Interval] = field(default_factory=dict)  # method label -> its critical's interval
    ahead: dict[str, dict[str, float]] = field(default_factory=dict)  # P(label needs less footprint than other)
    rank: dict[str, tuple[int, int] | None] = field(default_factory=dict)  # range of places, within a query mode
    target_interval: statistics.Interval | None = None  # threshold x full, full's own noise included
    notes: list[str] = field(default_factory=list)  # why an interval is missing, one line each


@dataclass
class GroupBoard:
    model: str
    context_length: int
    chunk_size: int
    categories: dict[str, CategoryBoard]
    statistics: dict | None = None  # level, replicates and seed of the intervals (None: no bootstrap)

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
            warnings.warn(
                f"{path}: left out, not a usable kvbench result file ({detail})", ResultFileWarning, stacklevel=2
            )
    return runs


def read_run(path, categories: dict[str, str]) -> Run:
    data = json.loads(Path(path).read_text())  # json.JSONDecodeError is a ValueError: a half-written file
    if not isinstance(data, dict) or "results" not in data:
        raise ValueError("no 'results' in it")
    kv = data.get("config", {}).get("kvbench")
    if not kv:
        raise ValueError("no config.kvbench: not run with `--model kvbench`, so no footprint")
    if not kv.get("tasks"):
        raise ValueError(
            "config.kvbench has no per-task tallies: no request reached kvbench (answered from lm-eval's "
            "--use_cache, which kvbench refuses, or no task ran), so there is no footprint to score"
        )
    method = str(kv["method"])
    knob = data["config"].get("kvbench_sweep", {}).get("knob")
    run = Run(
        str(path),
        str(kv["model"]),
        method,
        with_defaults(method, dict(kv.get("method_params", {}))),
        int(kv["chunk_size"]),
        knob,
        str(kv.get("query", "aware")),
    )
    configs = data.get("configs", {})
    sources = kv.get("data", {})  # the length the task ran at, also when it followed the model's (no --metadata)
    for task, footprint in kv["tasks"].items():
        if task not in data["results"]:
            raise ValueError(f"task {task!r} has a footprint but no score (a partial file?)")
        metadata = configs.get(task, {}).get("metadata") or {}
        category = categories.get(task) or metadata.get("category")
        if not category:
            warnings.warn(
                f"{path}: task {task!r} has no category (give one with --category {task}=CATEGORY); left out",
                ResultFileWarning,
                stacklevel=3,
            )
            continue
        key, score = main_score(data["results"][task], task)
        samples, why = read_task_samples(Path(path), task, key, score)
        n = (
            len(samples.doc_ids)
            if samples
            else int((data.get("n-samples", {}).get(task) or {}).get("effective") or footprint.get("requests") or 0)
        )
        run.tasks.append(
            TaskResult(
                task,
                str(category),
                int(
                    metadata.get("context_length")
                    or sources.get(task, {}).get("context_length")
                    or DEFAULT_CONTEXT_LENGTH
                ),
                score,
                float(footprint["kv_footprint"]),
                float(footprint["kv_peak"]),
                float(footprint["kv_peak_bytes"]),
                n,
                samples,
                why,
            )
        )
    if not run.tasks:
        raise ValueError("no task with a category")
    return run


def main_score(metrics: dict, task: str) -> tuple[str, float]:
    """(lm-eval's key, value) of the task's score: kvbench tasks report `score` (their main metric under one name);
    elsewhere, the first metric listed."""
    scores = {
        key: value
        for key, value in metrics.items()
        if "_stderr" not in key and key.split(",")[0] not in NOT_SCORES and isinstance(value, (int, float))
    }
    for key, value in scores.items():
        if key.split(",")[0] == "score":
            return key, float(value)
    if not scores:
        raise ValueError(f"task {task!r} has no numeric metric")
    key = next(iter(scores))
    return key, float(scores[key])


def read_task_samples(results_path: Path, task: str, key: str, score: float) -> tuple[Samples | None, str | None]:
    """The task's per-sample results beside its results file, or None and why not (in one line)."""
    path = samples_path(results_path, task)
    if not path.is_file():
        return None, (
            f"{results_path}: no per-sample file {path.name} for task {task!r} (made by a kvbench older "
            "than per-sample results, or not by kvbench; re-run it, or add --log_samples)"
        )
    metric, _, filter_name = key.partition(",")
    rows = [row for row in read_samples(path) if row.get("filter", "none") == (filter_name or "none")]
    if not rows or any(metric not in row for row in rows):
        return None, f"{path}: not every row carries the metric {metric!r} of filter {filter_name or 'none'!r}"
    doc_ids = np.array([int(row["doc_id"]) for row in rows])
    if len(set(doc_ids.tolist())) != len(doc_ids):
        return None, f"{path}: a document appears twice (two runs appended to one file?)"
    order = np.argsort(doc_ids)
    scores = np.array([float(rows[i][metric]) for i in order])
    if not np.isclose(scores.mean(), score, rtol=0, atol=1e-9 * max(1.0, abs(score))):
        return None, (
            f"{path}: the task's {metric} ({score:.6g}) is not the mean of its per-sample values "
            f"({scores.mean():.6g}): an aggregation other than the mean, which the bootstrap does not redo"
        )
    footprints = None
    if all("kv_footprint" in row for row in rows):
        footprints = np.array([float(rows[i]["kv_footprint"]) for i in order])
    units = np.array([str(rows[i].get("context_group") or f"doc {rows[i]['doc_id']}") for i in order])
    return Samples(doc_ids[order], units, scores, footprints), None


# ---- the critical footprint ----


def critical_footprint(
    points: list[tuple[float, float]], target: float, peaks: list[tuple[float, float]] | None = None
) -> Critical:
    """The smallest footprint x such that the piecewise-linear curve through (footprint, score), sorted by
    footprint, stays >= target from x up to the largest footprint.

    Runs at the same footprint (ties) are averaged into one point: the curve must be a function.
    `peaks` (kv_peak, kv_peak_bytes per point) are interpolated at x the same way. The crossing itself is
    `statistics.crossings`, the code every bootstrap replicate runs.
    """
    if not points:
        raise ValueError("no runs to find a critical footprint in")
    peaks = peaks or [(0.0, 0.0)] * len(points)
    merged = defaultdict(list)
    for (x, y), peak in zip(points, peaks, strict=True):
        merged[x].append((y, *peak))
    xs = sorted(merged)
    rows = [[sum(v[i] for v in merged[x]) / len(merged[x]) for i in range(3)] for x in xs]
    found = statistics.crossings(np.array([xs]), np.array([[row[0] for row in rows]]), np.array([target]))
    segment, t = int(found.segment[0]), float(found.t[0])
    if segment == len(xs) - 1:
        return Critical(xs[-1], ">", rows[-1][1], rows[-1][2])
    if segment < 0:
        return Critical(xs[0], "<", rows[0][1], rows[0][2])
    a, b = rows[segment], rows[segment + 1]
    return Critical(float(found.value[0]), "", *(a[i] + t * (b[i] - a[i]) for i in (1, 2)))


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
    return BASELINE, json.dumps(with_defaults(BASELINE, {}), sort_keys=True, default=str), query


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
        varying = sorted(
            {k for p in params.values() for k in p if len({repr(other.get(k)) for other in params.values()}) > 1}
        )
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


def with_defaults(method: str, params: dict) -> dict:
    """The setting's parameters with the registered method's defaults filled in, so that a file that records
    fewer parameters (an older kvbench) names the same setting."""
    try:
        from kvbench.plugins import method_class

        fields = dataclasses.fields(method_class(method))
    except Exception:  # noqa: BLE001 - a method from a plugin not installed here: take the file's word
        return dict(params)
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    return {**defaults, **params}


def score_runs(
    runs: list[Run],
    threshold: float = DEFAULT_THRESHOLD,
    level: float = statistics.DEFAULT_LEVEL,
    replicates: int = statistics.DEFAULT_REPLICATES,
    seed: int = statistics.DEFAULT_SEED,
) -> list[GroupBoard]:
    """Group task results by (model, context length, chunk size); per category, make each setting's point from
    its tasks, score it against `full`'s, and find each curve's critical footprint; then, from `replicates`
    paired bootstrap replicates of the per-sample results (none: 0), each critical footprint's `level` interval,
    the pairwise probabilities and the rank ranges (kvbench.statistics)."""
    check_threshold(threshold)
    if not 0 < level < 1:
        raise ValueError(f"the interval's level (--ci) must be in (0, 1), e.g. 0.95; got {level}")
    if not isinstance(replicates, int) or replicates < 0:
        raise ValueError(
            f"the number of bootstrap replicates (--bootstrap) must be an integer >= 0; got {replicates!r}"
        )
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
                (task, run.path)
            )
    boards = []
    for (model, context_length, chunk_size), categories in sorted(
        grouped.items(), key=lambda kv: tuple(map(str, kv[0]))
    ):
        board = GroupBoard(
            model,
            context_length,
            chunk_size,
            {},
            {"level": level, "replicates": replicates, "seed": seed} if replicates else None,
        )
        for category, settings in sorted(categories.items()):
            where = f"{board.name}, category {category!r}"
            if base not in settings and baseline_key("agnostic") in settings:
                settings[base] = settings.pop(baseline_key("agnostic"))  # the same logits in both modes
                params_of[base] = params_of[baseline_key("agnostic")]
            settings.pop(baseline_key("agnostic"), None)  # with both, the query-aware run is the baseline
            if base not in settings:
                raise ValueError(
                    f"no baseline: group {board.name} has no run of method '{BASELINE}' at its default "
                    f"parameters for category {category!r} (run `full` with the same model, context "
                    "length and chunk size)"
                )
            tasks = sorted(settings[base])
            points = {}
            for key, per_task in settings.items():
                missing = [t for t in tasks if t not in per_task]
                if missing:
                    _warn(
                        f"{where}: setting {_describe(key)} lacks task(s) {', '.join(missing)} that the baseline "
                        "ran; left out of this category"
                    )
                    continue
                extra = sorted(set(per_task) - set(tasks))
                if extra:
                    _warn(
                        f"{where}: task(s) {', '.join(extra)} of setting {_describe(key)} have no baseline run; "
                        "not counted"
                    )
                points[key] = _point(labels[key], params_of[key], [per_task[t] for t in tasks], where)
            base_point = points.pop(base)
            baseline = base_point.score
            chance = sum(CHANCE.get(task, 0.0) for task in tasks) / len(tasks)
            if baseline <= chance:
                _warn(
                    f"{where}: full attention scores {baseline:.3g}, no better than chance ({chance:.3g}): the model "
                    "cannot do these tasks, so no footprint can keep its score; category left out (is this the "
                    "model and data you meant?)"
                )
                continue
            target = threshold * baseline
            others = sorted(points.values(), key=lambda p: (p.method, p.footprint))
            curves = defaultdict(list)
            for p in others:
                curves[p.method].append(p)
            critical = {
                label: critical_footprint(
                    [(p.footprint, p.score) for p in ps], target, [(p.peak, p.peak_bytes) for p in ps]
                )
                for label, ps in curves.items()
            }
            cb = CategoryBoard(category, baseline, target, others, critical, n=base_point.n)
            if replicates:
                keys = {key: point for key, point in points.items()}
                samples = {key: [settings[key][t] for t in tasks] for key in [base, *keys]}
                _bootstrap(
                    cb,
                    base,
                    keys,
                    samples,
                    threshold,
                    level,
                    replicates,
                    statistics.category_seed(seed, model, context_length, chunk_size, category),
                )
                for note in cb.notes:
                    _warn(f"{where}: {note}")
            board.categories[category] = cb
        boards.append(board)
    return boards


def _task_samples(results: list[tuple[TaskResult, str]]) -> tuple[Samples | None, str | None]:
    """One setting's samples of one task; a task in several files (a rerun) gives the mean of its files' samples."""
    for result, _ in results:
        if result.samples is None:
            return None, result.no_samples
    first = results[0][0].samples
    if any(not np.array_equal(r.samples.doc_ids, first.doc_ids) for r, _ in results[1:]):
        return None, f"task {results[0][0].task!r} is in several files with different documents"

    def footprints(result: TaskResult) -> np.ndarray:  # the task's footprint stands for samples that carry none
        return (
            result.samples.footprints
            if result.samples.footprints is not None
            else np.full(len(result.samples.doc_ids), result.footprint)
        )

    return Samples(
        first.doc_ids,
        first.units,
        np.mean([r.samples.scores for r, _ in results], axis=0),
        np.mean([footprints(r) for r, _ in results], axis=0),
    ), None


def _bootstrap(
    cb: CategoryBoard,
    base: SettingKey,
    points: dict[SettingKey, Point],
    per_task: dict[SettingKey, list[list[tuple[TaskResult, str]]]],
    threshold: float,
    level: float,
    replicates: int,
    seed: np.random.SeedSequence,
) -> None:
    """Fill `cb`'s intervals, pairwise probabilities and rank ranges from paired bootstrap replicates.

    Every setting is resampled with the same units, the baseline's: a curve gets an interval when each of its
    points has per-sample results for exactly the baseline's documents of every task. Settings of one curve at
    the same footprint are averaged per sample, as `critical_footprint` averages their points."""
    samples = {}
    for key, results in per_task.items():
        tasks = [_task_samples(r) for r in results]
        samples[key] = None if any(s is None for s, _ in tasks) else [s for s, _ in tasks]
        if samples[key] is None and key == base:
            cb.notes.append(
                "no intervals or ranks: the baseline (full) has no usable per-sample results: "
                + next(why for s, why in tasks if s is None)
            )
            cb.rank = dict.fromkeys(cb.critical)
            return
    baseline = samples[base]
    curves: dict[str, list[list[SettingKey]]] = defaultdict(list)  # label -> columns, each its tied settings
    for label in cb.critical:
        keys = [key for key, point in points.items() if point.method == label]
        unusable = [
            key
            for key in keys
            if samples[key] is None
            or any(not np.array_equal(mine.doc_ids, theirs.doc_ids) for mine, theirs in zip(samples[key], baseline))
        ]
        if unusable:
            why = next(
                (r.no_samples for key in unusable for rs in per_task[key] for r, _ in rs if r.no_samples),
                "its samples are not the baseline's documents (another num_samples or seed?)",
            )
            cb.notes.append(f"{label}: no interval or rank ({why})")
            continue
        by_footprint = defaultdict(list)
        for key in keys:
            by_footprint[points[key].footprint].append(key)
        curves[label] = [by_footprint[x] for x in sorted(by_footprint)]
    columns = [[base]] + [column for label in curves for column in curves[label]]
    tasks = []
    for index, base_task in enumerate(baseline):
        codes = np.unique(base_task.units, return_inverse=True)[1]
        tasks.append(
            statistics.TaskSamples(
                codes,
                int(codes.max()) + 1,
                np.array([np.mean([samples[k][index].scores for k in column], axis=0) for column in columns]),
                np.array([np.mean([samples[k][index].footprints for k in column], axis=0) for column in columns]),
            )
        )
    where, start = {}, 1
    for label, groups in curves.items():
        where[label] = list(range(start, start + len(groups)))
        start += len(groups)
    found = statistics.category_statistics(tasks, where, threshold, replicates, level, np.random.default_rng(seed))
    cb.target_interval = found.target
    cb.interval.update(found.critical)
    for column, keys in enumerate(columns[1:], start=1):
        for key in keys:
            points[key] = dataclasses.replace(
                points[key], score_interval=found.score[column], footprint_interval=found.footprint[column]
            )
    cb.points[:] = sorted(points.values(), key=lambda p: (p.method, p.footprint))
    for query in {split_label(label)[1] for label in cb.critical}:
        mine = [label for label in cb.critical if split_label(label)[1] == query]
        replicated = [label for label in mine if label in found.crossings]
        cb.ahead.update(
            {
                a: {
                    b: statistics.ahead_probability(found.crossings[a], found.crossings[b])
                    for b in replicated
                    if b != a
                }
                for a in replicated
            }
        )
        ranks = statistics.rank_ranges({a: cb.ahead.get(a, {}) for a in mine}, level)
        cb.rank.update({label: ranks[label] if label in found.crossings else None for label in mine})


def _point(label: str, params: dict, per_task: list[list[tuple[TaskResult, str]]], where: str) -> Point:
    """Means over the tasks; a task found in several files (a rerun) counts once, as the mean of its files."""
    task_means = []
    for results in per_task:
        if len(results) > 1:
            _warn(
                f"{where}: task {results[0][0].task!r} of one setting is in {len(results)} files "
                f"({', '.join(path for _, path in results)}); using their mean"
            )
        task_means.append(
            {
                name: sum(getattr(r, name) for r, _ in results) / len(results)
                for name in ("score", "footprint", "peak", "peak_bytes")
            }
        )
    mean = {name: sum(t[name] for t in task_means) / len(task_means) for name in task_means[0]}
    files = tuple(sorted({path for results in per_task for _, path in results}))
    n = sum(results[0][0].n for results in per_task)
    return Point(label, params, mean["score"], mean["footprint"], mean["peak"], mean["peak_bytes"], files, n)


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
