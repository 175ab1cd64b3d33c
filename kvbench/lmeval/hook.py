"""Lets a plain `lm_eval` command see kvbench: the `kvbench` backend and kvbench's task folder.

lm-eval 0.4.13 reads no other package's entry points for models, so the installed package also
ships this file as the top-level module `kvbench_lmeval_hook` plus `kvbench_lmeval_hook.pth`,
whose one line imports it at interpreter start (see setup.py). It must stay cheap there: standard
library only, no torch, no kvbench, no lm_eval. It only puts a finder on `sys.meta_path` that
watches two lm-eval modules and, right after lm-eval has executed them:

- `lm_eval.models` (lm-eval's hard-coded backend map): registers "kvbench" as a lazy placeholder.
  Registering before that module runs would hide every built-in backend, because lm-eval only
  imports it while its registry is empty.
- `lm_eval.tasks.manager`: makes `TaskManager` also index kvbench's task folder, so
  `--tasks kvbench_recall` works without `--include_path`.
- `lm_eval.api.group`: a group whose metadata says `aggregate: children` averages its direct
  children (the `kvbench` group: the mean of its four categories, as HELMET reports it), where
  lm-eval 0.4.13 averages every leaf task of the tree. Other groups are untouched.
- `lm_eval._cli.harness`: kvbench's own errors print as one line (KVBENCH_DEBUG=1: the traceback).
- `lm_eval.loggers.utils`: lm-eval's `git describe` runs without printing git's "fatal:" line.
- `lm_eval.evaluator`: for a kvbench model, `evaluate` always logs per-sample results and hands them to
  kvbench (kvbench.lmeval.samples), which keeps them whole only when they were asked for; with several
  processes, each hands its footprint tallies to rank 0 once, after every request type has run.
- `lm_eval.loggers.evaluation_tracker`: the compact per-sample rows of a kvbench run are written beside the
  results file, `samples_<task>_<date>.jsonl`, also without `--log_samples`.
- `lm_eval.tasks._index`: the index of lm-eval's own task folder (about 15,000 YAML files, seconds to parse at
  every TaskManager) is kept in a file and reused while none of those files changed.

The finder loads nothing itself; it wraps the loader another finder returns.
"""

import sys

MODEL_NAME = "kvbench"
MODEL_TARGET = "kvbench.lmeval.backend:KVBenchLM"


def task_folders() -> list:
    """kvbench's task YAMLs: the installed `kvbench/tasks`, or a checkout's top-level `tasks/`.

    Equivalent to `importlib.resources.files("kvbench") / "tasks"`, but found without importing
    kvbench (which imports torch). Empty when kvbench or its tasks are not there.
    """
    from importlib.util import find_spec
    from pathlib import Path

    try:
        spec = find_spec("kvbench")
    except (ImportError, ValueError):
        return []
    folders = []
    for location in (spec.submodule_search_locations or []) if spec else []:
        package = Path(location)
        candidates = [package / "tasks"]
        if (package.parent / "pyproject.toml").is_file():  # a checkout, not site-packages
            candidates.append(package.parent / "tasks")
        folders += [str(c) for c in candidates if c.is_dir() and any(c.rglob("*.yaml")) and str(c) not in folders]
    return folders


def register_model(models_module=None) -> None:
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def patch_task_manager(manager_module) -> None:
    """Wrap TaskManager.__init__ so kvbench's folders come before any --include_path (which may override them)."""
    import functools
    import inspect

    cls = getattr(manager_module, "TaskManager", None)
    if cls is None or getattr(cls.__init__, "_kvbench_tasks", False):
        return
    original = cls.__init__
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        if arguments.get("include_defaults", True):  # include_defaults=False asks for exactly include_path
            given = arguments.get("include_path")
            given = [] if given is None else list(given) if isinstance(given, (list, tuple)) else [given]
            extra = [f for f in task_folders() if f not in map(str, given)]
            if extra:
                arguments["include_path"] = extra + given
        original(*bound.args, **bound.kwargs)

    __init__._kvbench_tasks = True
    cls.__init__ = __init__


def patch_group_aggregation(group_module) -> None:
    """Let a group aggregate over its direct children instead of its leaf tasks, when its metadata asks.

    lm-eval aggregates groups bottom-up, so a child group's metrics (its `score`, its stderr) are already in
    the metrics it is handed; the parent then runs lm-eval's own aggregation with the children as the units.
    """
    import functools

    cls = getattr(group_module, "Group", None)
    if cls is None or getattr(cls.aggregate, "_kvbench_children", False):
        return
    original = cls.aggregate

    class _Unit:  # what `get_all_tasks` yields and `aggregate` reads: a name
        def __init__(self, name):
            self.task_name = name

    @functools.wraps(original)
    def aggregate(self, task_metrics):
        if (self.metadata or {}).get("aggregate") != "children":
            return original(self, task_metrics)
        units = [_Unit(name) for name in self.child_names]
        self.get_all_tasks = lambda recursive=True: units  # an instance attribute, for this call only
        try:
            return original(self, task_metrics)
        finally:
            del self.get_all_tasks

    aggregate._kvbench_children = True
    cls.aggregate = aggregate


def _raised_by_kvbench(error: BaseException) -> bool:
    """Whether the error comes from kvbench's own checks (its message says what to do), not from somewhere deeper."""
    import os
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and f"{os.sep}kvbench{os.sep}" in frames[-1].filename


def patch_cli(harness_module) -> None:
    """Plain `lm_eval`: kvbench's own errors (a bad model path, parameter, task setting) print as one line saying
    what to do, instead of the end of a long traceback; KVBENCH_DEBUG=1 shows the traceback."""
    import functools
    import os

    cls = getattr(harness_module, "HarnessCLI", None)
    if cls is None or getattr(cls.execute, "_kvbench_errors", False):
        return
    original = cls.execute

    @functools.wraps(original)
    def execute(self, *args, **kwargs):
        try:
            return original(self, *args, **kwargs)
        except (ValueError, OSError) as error:
            if os.environ.get("KVBENCH_DEBUG") or not _raised_by_kvbench(error):
                raise
            print(f"kvbench: error: {error}\n(KVBENCH_DEBUG=1 shows the traceback)", file=sys.stderr)
            raise SystemExit(2) from None

    execute._kvbench_errors = True
    cls.execute = execute


def quiet_git(logger_utils) -> None:
    """lm-eval asks `git describe` for a commit hash in every run; outside a git checkout git prints
    "fatal: not a git repository" to the terminal. Ask it quietly (the fallback lm-eval has is kept)."""
    import os
    import subprocess

    original = getattr(logger_utils, "get_git_commit_hash", None)
    if (
        original is None
        or not hasattr(logger_utils, "get_commit_from_path")
        or getattr(original, "_kvbench_quiet", False)
    ):
        return

    def get_git_commit_hash():
        try:
            return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
        except (subprocess.CalledProcessError, FileNotFoundError):  # no git, or not a checkout: lm-eval's fallback
            return logger_utils.get_commit_from_path(os.getcwd())

    get_git_commit_hash._kvbench_quiet = True
    logger_utils.get_git_commit_hash = get_git_commit_hash
    evaluator = sys.modules.get("lm_eval.evaluator")  # already bound the original, when lm-eval came first
    if evaluator is not None and getattr(evaluator, "get_git_commit_hash", None) is original:
        evaluator.get_git_commit_hash = get_git_commit_hash


def patch_evaluate(evaluator) -> None:
    """A kvbench model's `evaluate` logs every sample (intervals need per-sample results), and kvbench adds each
    document's footprint to its row; the rows stay whole only when the caller asked for them (log_samples)."""
    import functools
    import inspect

    original = getattr(evaluator, "evaluate", None)
    if original is None or getattr(original, "_kvbench_samples", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def evaluate(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        lm = bound.arguments.get("lm")
        if not getattr(lm, "kvbench_backend", False):
            return original(*args, **kwargs)
        asked = bool(bound.arguments.get("log_samples"))
        bound.arguments["log_samples"] = True
        results = original(*bound.args, **bound.kwargs)
        lm.gather_tallies()  # every process, once, after every request type: the footprints meet on rank 0
        if results is None:  # a data-parallel process other than rank 0
            return None
        from kvbench.lmeval.samples import attach

        return attach(lm.tally, results, keep_full=asked, selected=bound.arguments.get("samples"))

    evaluate._kvbench_samples = True
    evaluator.evaluate = evaluate


def patch_tracker(tracker_module) -> None:
    """Write a kvbench run's compact per-sample rows beside lm-eval's results file (lm-eval writes samples only
    with --log_samples; kvbench's are small and always wanted)."""
    import functools

    cls = getattr(tracker_module, "EvaluationTracker", None)
    if cls is None or getattr(cls.save_results_aggregated, "_kvbench_samples", False):
        return
    original = cls.save_results_aggregated

    @functools.wraps(original)
    def save_results_aggregated(self, results, *args, **kwargs):
        compact = results.pop("kvbench_samples", None)
        original(self, results, *args, **kwargs)
        if compact and self.output_path:
            from kvbench.lmeval.samples import write_beside_lm_eval_results

            write_beside_lm_eval_results(self, compact)

    save_results_aggregated._kvbench_samples = True
    cls.save_results_aggregated = save_results_aggregated


def cache_task_index(index_module) -> None:
    """lm-eval parses every YAML of its own task folder whenever a TaskManager is made: seconds in every `lm_eval`
    run, every sweep cell's task manager and every test that runs lm-eval. Keep that folder's index in a file under
    the user's cache, reused while the folder's YAML files are the same (their paths, sizes and modification times
    are its key); any other folder is indexed as before, and later folders still override earlier ones."""
    from pathlib import Path

    cls = getattr(index_module, "TaskIndex", None)
    if cls is None or getattr(cls.build, "_kvbench_cached", False):
        return
    original = cls.build
    own_folder = Path(index_module.__file__).resolve().parent
    log = getattr(index_module, "log", None)

    def build(paths, *, resolve_includes=True):
        index = {}
        for root in paths:
            if resolve_includes and Path(root).resolve() == own_folder:
                part = _cached_index(original, Path(root))
            else:
                part = original([root], resolve_includes=resolve_includes)
            for name, entry in part.items():
                if name in index and log is not None:
                    log.warning(
                        "Task '%s' from %s overrides existing task from %s",
                        name,
                        entry.yaml_path,
                        index[name].yaml_path,
                    )
                index[name] = entry
        return index

    build._kvbench_cached = True
    cls.build = staticmethod(build)


def _cached_index(build, root) -> dict:
    import hashlib
    import os
    import pickle
    import tempfile
    from pathlib import Path

    try:
        key = hashlib.sha256()
        for path in sorted(root.glob("**/*.yaml")):
            status = path.stat()
            key.update(f"{path}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kvbench"
        stored = cache / f"lm-eval-task-index-{key.hexdigest()[:20]}.pickle"
        if stored.is_file():
            return pickle.loads(stored.read_bytes())
    except Exception:  # an unreadable or stale cache is no reason to fail: index as lm-eval does
        return build([root], resolve_includes=True)
    index = build([root], resolve_includes=True)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=cache, suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            pickle.dump(index, file)
        os.replace(temporary, stored)
    except Exception:  # a read-only home: the next run indexes again
        pass
    return index


WATCHED = {
    "lm_eval.models": register_model,
    "lm_eval.tasks.manager": patch_task_manager,
    "lm_eval.api.group": patch_group_aggregation,
    "lm_eval._cli.harness": patch_cli,
    "lm_eval.loggers.utils": quiet_git,
    "lm_eval.evaluator": patch_evaluate,
    "lm_eval.loggers.evaluation_tracker": patch_tracker,
    "lm_eval.tasks._index": cache_task_index,
}


class _WrappedLoader:
    def __init__(self, loader, callback):
        self.loader, self.callback = loader, callback

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        try:
            self.callback(module)
        except Exception as error:  # never break lm-eval itself because of kvbench
            print(
                f"kvbench: lm-eval hook failed ({type(error).__name__}: {error}); `--model kvbench` may be unavailable",
                file=sys.stderr,
            )

    def __getattr__(self, name):  # get_resource_reader, is_package, ... of the real loader
        return getattr(self.loader, name)


class AfterImportFinder:
    """A meta-path finder that finds nothing itself: it wraps the real loader of a watched module."""

    def find_spec(self, name, path=None, target=None):
        callback = WATCHED.get(name)
        if callback is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _WrappedLoader(spec.loader, callback)
                return spec
        return None


def install() -> None:
    """Idempotent. Modules lm-eval has already imported get their callback now. A finder put there by another
    copy of this file (the installed `kvbench_lmeval_hook` beside a checkout's `kvbench.lmeval.hook`) gives way
    to this one, so the callbacks are the code being run."""
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != AfterImportFinder.__name__]
    sys.meta_path.insert(0, AfterImportFinder())
    for name, callback in WATCHED.items():
        if name in sys.modules:
            callback(sys.modules[name])


if __name__ == "kvbench_lmeval_hook":  # imported by the .pth file at interpreter start
    install()
