"""Every default lives in one place: the CLI, the sweep, the backend and the engine take theirs from
kvbench.settings, the methods' dataclasses and TrainSettings, never a copy."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from kvbench import cli, engine, ledger, scoring, settings, sweep
from kvbench.data import common
from kvbench.demo import run as demo_run
from kvbench.lmeval.backend import KVBenchLM
from kvbench.method import ScoreMethod
from kvbench.methods.head_pattern import HeadPatternMethod
from kvbench.methods.streamingllm import StreamingLLM
from kvbench.training.common import TrainSettings


def defaults(function) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def options(argv: list[str]) -> dict:
    """The parsed defaults of a `kvbench` command line."""
    return vars(cli.build_parser().parse_args(argv))


def field_default(cls, name):
    return {field.name: field.default for field in dataclasses.fields(cls)}[name]


def test_the_methods_defaults_are_the_settings():
    assert field_default(StreamingLLM, "sink") == field_default(HeadPatternMethod, "sink") == settings.DEFAULT_SINK
    assert (
        field_default(StreamingLLM, "window") == field_default(HeadPatternMethod, "window") == settings.DEFAULT_WINDOW
    )
    assert field_default(ScoreMethod, "recent") == settings.DEFAULT_RECENT
    assert ScoreMethod().keep == settings.DEFAULT_KEEP  # neither keep nor budget given
    assert field_default(HeadPatternMethod, "head_sparsity") == settings.DEFAULT_HEAD_SPARSITY
    assert field_default(TrainSettings, "sink") == settings.DEFAULT_SINK
    assert field_default(TrainSettings, "window") == settings.DEFAULT_WINDOW


def test_the_engine_backend_sweep_and_scorer_read_theirs_from_settings():
    assert defaults(engine.generate)["chunk_size"] == engine.Options.chunk_size == settings.DEFAULT_CHUNK_SIZE
    for name in ("max_new_tokens", "stop", "eos_token_id", "attn", "return_logits", "stop_token_ids", "trace"):
        assert defaults(engine.generate)[name] == getattr(engine.Options, name)
    assert defaults(engine.score_continuation)["chunk_size"] == settings.DEFAULT_CHUNK_SIZE
    backend = defaults(KVBenchLM.__init__)
    assert backend["chunk_size"] == defaults(KVBenchLM.configure)["chunk_size"] == settings.DEFAULT_CHUNK_SIZE
    assert backend["query"] == defaults(KVBenchLM.configure)["query"] == settings.QUERY_MODES[0]
    assert defaults(sweep.refine)["threshold"] == defaults(demo_run)["threshold"] == settings.DEFAULT_THRESHOLD
    assert defaults(scoring.score_runs)["threshold"] == settings.DEFAULT_THRESHOLD
    assert scoring.DEFAULT_CONTEXT_LENGTH == common.DEFAULT_LENGTH == settings.DEFAULT_CONTEXT_LENGTH
    assert defaults(ledger.analytic_footprint)["always_keep_window"] == settings.DEFAULT_RECENT


def test_the_cli_reads_its_defaults_from_their_homes():
    footprint = options(["footprint", "--prompt-len", "8"])
    assert footprint["chunk_size"] == settings.DEFAULT_CHUNK_SIZE
    assert (footprint["sink"], footprint["window"]) == (settings.DEFAULT_SINK, settings.DEFAULT_WINDOW)
    assert footprint["keep"] == settings.DEFAULT_KEEP and footprint["always_keep_window"] == settings.DEFAULT_RECENT
    assert footprint["streaming_head_share"] == settings.DEFAULT_HEAD_SPARSITY
    assert options(["leaderboard", "x"])["threshold"] == settings.DEFAULT_THRESHOLD
    assert options(["sweep", "x.yaml"])["threshold"] == settings.DEFAULT_THRESHOLD
    assert options(["plot", "chunks", "x", "--out", "y.png"])["threshold"] == settings.DEFAULT_THRESHOLD
    train = options(["prulong", "train", "--model", "m", "--out", "o"])
    for field in dataclasses.fields(TrainSettings):
        if field.name in train and field.name not in ("model", "out", "lr", "tasks"):
            assert train[field.name] == field.default, field.name
    assert tuple(train["tasks"]) == field_default(TrainSettings, "tasks")


@pytest.mark.parametrize(
    "value, expected", [("true", True), ("Yes", True), ("1", True), (False, False), ("none", False)]
)
def test_one_bool_and_one_dtype_parser(value, expected):
    assert settings.parse_bool(value, "trace") is expected
    with pytest.raises(ValueError, match="trace must be true or false; got 'maybe'"):
        settings.parse_bool("maybe", "trace")
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, bfloat16, float16; got 'int8'"):
        settings.parse_dtype("int8")
