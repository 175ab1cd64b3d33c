"""The registry, plugin discovery and the conformance kit, with real and deliberately broken plugins."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch

import kvbench
from kvbench.method import Method
from kvbench.methods.snapkv import SnapKV
from kvbench.methods.streamingllm import StreamingLLM
from kvbench.plugins import build_registry, hookimpl, plugin_manager
from kvbench.testing import format_report, run_checks


def kvbench_command(*args, env_path=None):
    env = None
    if env_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(env_path)}
    return subprocess.run([sys.executable, "-m", "kvbench", *args], capture_output=True, text=True, env=env)


# ---- the example plugin, installed from plugins/ as a user would ----


@pytest.mark.slow
def test_installed_plugin_is_listed_with_its_source():
    rows = {row["name"]: row for row in json.loads(kvbench_command("methods", "--json").stdout)}
    assert {"full", "streamingllm", "tova"} <= set(rows)
    assert rows["tova"]["source"].startswith("kvbench-tova 0.1.0")
    assert rows["streamingllm"]["source"] == "kvbench (built-in)"
    assert rows["streamingllm"]["parameters"] == {"kv_bits": 16, "sink": 128, "window": 1024}


@pytest.mark.slow
def test_installed_plugin_passes_kvbench_check():
    result = kvbench_command("check", "tova", "budget=48")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout


# ---- broken plugins: warned about, the rest still loads ----


def fake_distribution(root, name, entry_points: dict[str, str], modules: dict[str, str]):
    """A distribution on a PYTHONPATH entry: dist-info with entry points, and its modules."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[kvbench]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.mark.slow
def test_plugin_that_fails_to_import_is_named_in_a_warning_and_others_load(tmp_path):
    fake_distribution(
        tmp_path, "broken-plugin", {"broken": "broken_module"}, {"broken_module": "import no_such_module_xyz\n"}
    )
    result = kvbench_command("methods", "--json", env_path=tmp_path)
    assert result.returncode == 0
    assert "kvbench plugin broken-plugin 0.1 (entry point 'broken') failed to load" in result.stderr
    assert "No module named 'no_such_module_xyz'" in result.stderr
    names = {row["name"] for row in json.loads(result.stdout)}
    assert {"full", "streamingllm", "tova"} <= names


@dataclass
class Duplicate(Method):
    name = "streamingllm"
    category = "recency"


class NoDataclass(Method):
    name = "no-dataclass"
    category = "recency"


@dataclass
class Nameless(Method):
    category = "recency"


class SomeDistribution:
    @staticmethod
    @hookimpl
    def kvbench_methods():
        return [Duplicate]


def test_two_methods_with_one_name_is_an_error_naming_both_sources():
    manager = plugin_manager()
    manager.register(SomeDistribution, name="some-dist 2.0 (entry point 'dup')")
    with pytest.raises(
        ValueError,
        match=r"two methods are registered as 'streamingllm': one from kvbench \(built-in\), "
        r"one from some-dist 2.0 \(entry point 'dup'\)",
    ):
        build_registry(manager)


def test_method_lacking_the_contract_is_refused_saying_what_is_missing():
    class Lacking:
        @staticmethod
        @hookimpl
        def kvbench_methods():
            return [NoDataclass, Nameless, int]

    manager = plugin_manager()
    manager.register(Lacking, name="lacking 1.0")
    with pytest.warns(kvbench.plugins.PluginWarning) as caught:
        entries = build_registry(manager)
    messages = "\n".join(str(w.message) for w in caught)
    assert "kvbench plugin lacking 1.0: method NoDataclass refused: not decorated with @dataclass" in messages
    assert "Nameless refused: missing or bad `name`" in messages
    assert "int refused: not a subclass of kvbench.Method" in messages
    assert "streamingllm" in entries and "no-dataclass" not in entries


def test_a_misspelt_hook_implementation_is_named_and_its_plugin_left_out():
    from kvbench.plugins import _refuse_unknown_hooks

    class Typo:
        @staticmethod
        @hookimpl
        def kvbench_method():  # should be kvbench_methods: pluggy would ignore it in silence
            return [Duplicate]

    manager = plugin_manager()
    manager.register(Typo, name="typo 1.0")
    with pytest.warns(
        kvbench.plugins.PluginWarning,
        match=r"kvbench plugin typo 1.0 left out: .*kvbench_method.*"
        r"kvbench's hooks: kvbench_methods",
    ):
        _refuse_unknown_hooks(manager, Typo, "typo 1.0")
    assert not manager.is_registered(Typo) and "streamingllm" in build_registry(manager)


def test_the_old_name_of_evicts_while_decoding_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match="evict_during_decode = True. is deprecated; define"):

        @dataclass
        class OldStyle(kvbench.ScoreMethod):
            name = "old-style"
            evict_during_decode = True

            def score(self, view):
                return view.attention_scores()

    assert OldStyle(budget=8).evicts_while_decoding() and not SnapKV().evicts_while_decoding()
    view = kvbench.KeepView(
        0,
        0,
        [0],
        kvbench.Phase(True, 0),
        torch.zeros(1, 4, dtype=torch.long),
        torch.zeros(1, 4, 2),
        torch.zeros(1, 4, 2),
        torch.zeros(1, 1, 1, 2),
        1,
        1.0,
    )
    with pytest.warns(DeprecationWarning, match="evicts_at is deprecated; call evicts_now"):
        assert OldStyle(budget=8).evicts_at(view) is True


# ---- unknown names and parameters ----


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(
        ValueError,
        match=r"unknown method 'snapkvv'; known methods: adakv, cake, chunkkv, duoattention, expected_attention, "
        r"full, h2o, keydiff, kvzip, l2norm, lagkv, prulong, pyramidkv, random, simlayerkv, snapkv, streamingllm, think, "
        r"tova",
    ):
        kvbench.load_method("snapkvv")


def test_unknown_parameter_is_named_with_the_methods_parameters():
    with pytest.raises(
        ValueError,
        match=r"method 'streamingllm' has no parameter 'windw'; its parameters: "
        r"kv_bits \(default 16\), sink \(default 128\), window \(default 1024\)",
    ):
        kvbench.load_method("streamingllm", windw=3)


def test_string_parameters_are_converted_or_named_when_ill_typed():
    assert kvbench.load_method("streamingllm", sink="4", window="32") == StreamingLLM(sink=4, window=32)
    with pytest.raises(ValueError, match="parameter 'window' of method 'streamingllm' must be int; got '3.5x'"):
        kvbench.load_method("streamingllm", window="3.5x")


# ---- the conformance kit fails deliberately broken methods, readably ----


@dataclass
class OutOfRange(StreamingLLM):
    name = "out-of-range"

    def select(self, view):
        return torch.full((len(view.heads), 1), view.num_held + 3)


@dataclass
class MakesNaN(StreamingLLM):
    name = "makes-nan"

    def select(self, view):
        view.values.fill_(float("nan"))  # corrupting the held entries in place
        return None


@dataclass
class WrongDirection(StreamingLLM):
    """Declares that a larger window keeps more, but keeps less."""

    name = "wrong-direction"

    def select(self, view):
        window = max(1, 4096 // self.window)
        return StreamingLLM(sink=self.sink, window=window).select(view)


@dataclass
class ScoresWithoutTheTail(SnapKV):
    """Scores only the entries it keeps, forgetting the patched schedule's scoring tail: misaligned scores."""

    name = "scores-without-the-tail"

    def score(self, view):
        return super().score(view)[:, : view.num_held - view.num_scoring]


@dataclass
class NoisyScores(SnapKV):
    """Random noise on its scores: the same counts kept (footprint, often tokens), different entries each run."""

    name = "noisy-scores"

    def score(self, view):
        return super().score(view) + torch.rand(len(view.heads), view.num_held)


@dataclass
class NaNScores(SnapKV):
    """Scores that are NaN for a few entries of every head: top-k ranks NaN first, so exactly those are kept, while
    logits, footprint and determinism all look fine."""

    name = "nan-scores"

    def score(self, view):
        scores = super().score(view).clone()
        scores[:, ::5] = float("nan")
        return scores


def failures(results):
    return {r.name: r.detail for r in results if r.failed}


def test_check_fails_scores_of_the_wrong_shape_under_the_patched_schedule():
    failed = failures(
        run_checks(ScoresWithoutTheTail, {"schedule": "patched", "keep": 0.3, "recent": 8, "obs_window": 8})
    )
    assert (
        "score() must return one score per KV head and held entry, [heads, held] = [2, "
        in failed["every phase, chunk sizes 1/7/64/>prompt"]
    )


def test_check_fails_a_nondeterministic_selection():
    # Noise changes which entries are kept (checked first by what the model writes, then by the entries kept).
    failed = failures(run_checks(NoisyScores, {"keep": 0.3, "recent": 8, "obs_window": 8}))
    assert failed["deterministic"] in (
        "two runs generated different tokens",
        "two runs measured different footprints",
    ) or failed["deterministic"].startswith("two runs kept different entries")


def test_check_fails_a_method_keeping_out_of_range_indices():
    failed = failures(run_checks(OutOfRange))
    assert "every phase, chunk sizes 1/7/64/>prompt" in failed
    assert "select() returned indices outside" in failed["every phase, chunk sizes 1/7/64/>prompt"]


def test_check_fails_a_method_producing_nan():
    failed = failures(run_checks(MakesNaN))
    assert "NaN or inf in the logits" in failed["every phase, chunk sizes 1/7/64/>prompt"]


def test_check_fails_a_method_whose_scores_hold_nan():
    failed = failures(run_checks(NaNScores, {"keep": 0.3, "recent": 8, "obs_window": 8}))
    # chunks of 1 and 7 tokens fit in the recent window (nothing scored); chunks of 64 evict
    assert failed["every phase, chunk sizes 1/7/64/>prompt"].startswith(
        "llama-gqa, chunk 64: score() returned NaN at layer 0, heads [0, 1], chunk 1 of 2"
    )
    # the symptom the check exists for: nothing else notices
    assert set(failed) == {"every phase, chunk sizes 1/7/64/>prompt"}


def test_check_fails_a_knob_moving_the_wrong_way():
    results = run_checks(WrongDirection, {"sink": 4})
    failed = failures(results)
    assert "footprint does not increase with window" in failed["knob moves the footprint its declared way"]
    assert "FAIL  knob moves the footprint its declared way" in format_report(results)


@pytest.mark.slow
def test_check_command_exits_non_zero_on_a_broken_plugin(tmp_path):
    source = """
        from dataclasses import dataclass
        import torch
        import kvbench
        from kvbench.methods.streamingllm import StreamingLLM

        @dataclass
        class Broken(StreamingLLM):
            name = "broken-nan"
            def select(self, view):
                view.keys.fill_(float("nan"))
                return None

        @kvbench.hookimpl
        def kvbench_methods():
            return [Broken]
    """
    fake_distribution(tmp_path, "broken-nan", {"broken": "broken_nan"}, {"broken_nan": source})
    result = kvbench_command("check", "broken-nan", env_path=tmp_path)
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "NaN or inf in the logits" in result.stdout
    assert "check(s) failed" in result.stdout


def test_builtin_methods_pass_the_kit():
    for name, params in {"full": {}, "streamingllm": {"sink": 4, "window": 24}}.items():
        results = run_checks(name, params)
        assert not failures(results), format_report(results)
