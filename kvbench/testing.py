"""The conformance kit behind `kvbench check`, importable by plugin authors' own tests.

    from kvbench.testing import assert_conforms
    def test_my_method():
        assert_conforms("my-method", {"keep": 0.3})

Each check runs the method on tiny random models (Llama and Qwen2 configs with GQA) through the real
engine, so what it verifies is what a benchmark run would do.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kvbench.engine import generate
from kvbench.method import Method, ModelShape, ScoreMethod
from kvbench.methods.full import Full
from kvbench.plugins import coerce_params, method_class
from kvbench.quant import bytes_per_entry

PROMPT_TOKENS = 96
NEW_TOKENS = 4
CHUNK_SIZES = (1, 7, 64, PROMPT_TOKENS + 1)
KNOB_PROMPT_TOKENS, KNOB_CHUNK_SIZE = 512, 128


@dataclass
class CheckResult:
    name: str
    status: str  # "pass", "fail" or "skip"
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "fail"


def conformance_models() -> dict[str, torch.nn.Module]:
    """Tiny random Llama and Qwen2 models with grouped-query attention (4 query heads over 2 KV heads) and three
    layers, so that a method leaving its first two layers whole (l2norm's skip_layers) still evicts."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        attn_implementation="sdpa",
    )
    models = {}
    for label, (config_class, model_class) in {
        "llama-gqa": (LlamaConfig, LlamaForCausalLM),
        "qwen2-gqa": (Qwen2Config, Qwen2ForCausalLM),
    }.items():
        torch.manual_seed(0)
        models[label] = model_class(config_class(**common)).eval()
    return models


def run_checks(method: str | type[Method], params: dict | None = None, models: dict | None = None) -> list[CheckResult]:
    """Every conformance check of `method` (a registered name or a Method class) with `params`."""
    cls = method_class(method) if isinstance(method, str) else method
    params = {**cls.check_params, **(params or {})}
    results = [_check("parameters", lambda: _parameters(cls, params))]
    if results[0].failed:
        return results
    models = models if models is not None else conformance_models()
    checks: list[tuple[str, Callable[[], str]]] = [
        ("keeps everything = full attention", lambda: _keeps_everything(cls, params, models)),
        ("every phase, chunk sizes 1/7/64/>prompt", lambda: _phases(cls, params, models)),
        ("knob moves the footprint its declared way", lambda: _knob(cls, params, models)),
        ("deterministic", lambda: _deterministic(cls, params, models)),
    ]
    results += [_check(name, check) for name, check in checks]
    return results


def assert_conforms(method: str | type[Method], params: dict | None = None, models: dict | None = None) -> None:
    """For pytest: raise AssertionError with the readable report if any check fails."""
    results = run_checks(method, params, models)
    if any(result.failed for result in results):
        raise AssertionError("\n" + format_report(results))


def format_report(results: list[CheckResult]) -> str:
    return "\n".join(f"{r.status.upper():4}  {r.name}{': ' + r.detail if r.detail else ''}" for r in results)


class Skip(Exception):
    """A check that does not apply to this method."""


def _check(name: str, check: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(name, "pass", check())
    except Skip as reason:
        return CheckResult(name, "skip", str(reason))
    except AssertionError as failure:
        return CheckResult(name, "fail", str(failure))
    except Exception as error:
        return CheckResult(name, "fail", f"{type(error).__name__}: {error}")


def _build(cls: type[Method], params: dict, **overrides) -> Method:
    params = dict(params)
    # ScoreMethod's `keep` and `budget` are alternatives: setting one drops the other.
    for one, other in (("keep", "budget"), ("budget", "keep")):
        if one in overrides and issubclass(cls, ScoreMethod):
            params.pop(other, None)
            overrides.setdefault(other, None)
    return cls(**coerce_params(cls, {**params, **overrides}))


def _run(model, method: Method, chunk_size: int, prompt_tokens: int = PROMPT_TOKENS):
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (prompt_tokens,), generator=generator)
    return generate(
        model, prompt, method, chunk_size=chunk_size, max_new_tokens=NEW_TOKENS, eos_token_id=[], return_logits=True
    )


def _parameters(cls: type[Method], params: dict) -> str:
    _build(cls, params)
    fields = dataclasses.fields(cls)
    try:
        _build(cls, params, no_such_parameter=1)
        raise AssertionError("an unknown parameter was accepted")
    except ValueError as error:
        assert "no_such_parameter" in str(error), f"unknown-parameter error does not name it: {error}"
    checked = []
    for field in fields:
        if not isinstance(field.default, (int, float)) or isinstance(field.default, bool):
            continue
        for bad in ("not-a-number", -1):
            try:
                _build(cls, params, **{field.name: bad})
            except (ValueError, TypeError) as error:
                assert field.name in str(error), f"the error for {field.name}={bad!r} does not name it: {error}"
            else:
                assert bad != "not-a-number", f"{field.name}='not-a-number' was accepted"
        checked.append(field.name)
    return f"errors name the parameter ({', '.join(checked) or 'no numeric parameters'})"


def _keeps_everything(cls, params, models) -> str:
    if not cls.keeps_everything and cls is not Full:
        raise Skip("the method declares no `keeps_everything` settings")
    for label, model in models.items():
        method = _build(cls, params, **cls.keeps_everything)
        got, want = _run(model, method, 7), _run(model, Full(kv_bits=method.kv_bits), 7)
        _same_greedy(got, want, 1e-4, label)
        # What is held (the footprint, peaks, bytes, entries); the transient peak may differ (a patched schedule
        # holds its scoring tail while it scores, then drops it).
        held, full = (dataclasses.replace(stats, kv_transient_peak_bytes=0) for stats in (got.stats, want.stats))
        assert held == full, f"{label}: footprint {got.stats} != full attention's {want.stats}"
    return f"with {cls.keeps_everything}: same tokens, logits and footprint as full attention"


def _same_greedy(got, want, tolerance: float, label: str) -> None:
    """The same logits within `tolerance` at every step, and the same tokens wherever full attention's choice is
    decisive (its top two logits further apart than the tolerance could move them): two computations may round
    differently, and a near-tie is theirs to break either way. After a tie broken differently the runs part."""
    for step, (mine, theirs) in enumerate(zip(got.logits, want.logits)):
        difference = (mine - theirs).abs().max().item()
        assert difference < tolerance, f"{label}: logits differ from full attention by {difference:.2e} (step {step})"
        top = theirs.topk(2).values
        if got.token_ids[step] != want.token_ids[step]:
            assert (top[0] - top[1]).item() <= 2 * tolerance, f"{label}: tokens differ from full attention"
            return
    assert len(got.token_ids) == len(want.token_ids), f"{label}: tokens differ from full attention"


def _phases(cls, params, models) -> str:
    for label, model in models.items():
        shape = ModelShape.from_config(model.config)
        for chunk_size in CHUNK_SIZES:
            method = _build(cls, params)
            per_entry = bytes_per_entry(shape.head_dim, model.dtype, method.kv_bits)
            seen = _record_phases(method)
            nan_scores = _record_nan_scores(method)
            result = _run(model, method, chunk_size)  # the cache validates every decision
            where = f"{label}, chunk {chunk_size}"
            # top-k ranks NaN above every number, so NaN scores keep the wrong entries without any other symptom
            assert not nan_scores, f"{where}: score() returned NaN at {nan_scores[0]} ({len(nan_scores)} call(s))"
            logits = torch.stack(result.logits)
            assert torch.isfinite(logits).all(), f"{where}: NaN or inf in the logits"
            stats = result.stats
            assert 0 < stats.kv_footprint <= 1, f"{where}: kv_footprint {stats.kv_footprint} outside (0, 1]"
            # A method's own forward steps (KVzip's reconstruction) hold their entries beside the request's.
            most = 1 + stats.extra_tokens / stats.tokens
            assert 0 < stats.kv_peak <= most, f"{where}: kv_peak {stats.kv_peak} outside (0, {most:g}]"
            if type(method).select_key_channels is Method.select_key_channels:
                assert stats.kv_peak_bytes == stats.kv_entries * per_entry, (
                    f"{where}: physical peak {stats.kv_peak_bytes} B != {stats.kv_entries} entries x {per_entry} B"
                )
            else:  # entries with pruned key channels take fewer bytes: the two peaks need not be at one moment
                assert stats.kv_peak_bytes <= stats.kv_entries * per_entry, (
                    f"{where}: physical peak {stats.kv_peak_bytes} B > {stats.kv_entries} entries x {per_entry} B"
                )
            expected = {"chunk", "last chunk", "decode"} if chunk_size < PROMPT_TOKENS else {"last chunk", "decode"}
            assert seen >= expected, f"{where}: select() was not called at {sorted(expected - seen)}"
    return (
        "valid decisions, no NaN scores, finite logits, footprint and peak in (0, 1] (the peak above by a method's "
        "extra tokens), physical bytes = ledger"
    )


def _record_phases(method: Method) -> set[str]:
    seen: set[str] = set()
    decide = method.select_layer  # the step asks each layer through select_layer (by default: select per group)

    def select_layer(views):
        for view in views:
            phase = view.phase
            seen.add("decode" if phase.is_decode else "last chunk" if phase.is_last_chunk else "chunk")
        return decide(views)

    method.select_layer = select_layer
    return seen


def _record_nan_scores(method: Method) -> list[str]:
    """Where a score method's `score` returned NaN (layer, head group, phase), in call order."""
    found: list[str] = []
    if not isinstance(method, ScoreMethod):
        return found
    score = method.score

    def checked(view):
        scores = score(view)
        if torch.is_tensor(scores) and torch.isnan(scores).any():
            phase = view.phase
            step = "decode" if phase.is_decode else f"chunk {phase.chunk_index + 1} of {phase.num_chunks}"
            found.append(f"layer {view.layer}, heads {list(view.heads)}, {step}")
        return scores

    method.score = checked
    return found


def _knob(cls, params, models) -> str:
    if cls.knob is None:
        raise Skip("the method declares no knob")
    values = sorted(cls.knob_values)
    if len(values) < 2:
        raise Skip(f"knob {cls.knob!r} declares fewer than two knob_values")
    model = models["llama-gqa"]
    footprints = []
    for value in values:
        method = _build(cls, params, **{cls.knob: value})
        footprints.append(_run(model, method, KNOB_CHUNK_SIZE, KNOB_PROMPT_TOKENS).stats.kv_footprint)
    sign = 1 if cls.knob_increases else -1
    steps = [sign * (b - a) for a, b in zip(footprints, footprints[1:])]
    pairs = ", ".join(f"{v}: {f:.3f}" for v, f in zip(values, footprints))
    direction = "increase" if cls.knob_increases else "decrease"
    assert all(step >= -1e-12 for step in steps) and not math.isclose(footprints[0], footprints[-1]), (
        f"footprint does not {direction} with {cls.knob} ({pairs})"
    )
    return f"{cls.knob} -> footprint: {pairs}"


def _deterministic(cls, params, models) -> str:
    model = models["llama-gqa"]
    runs = []
    for _ in range(2):
        method = _build(cls, params)
        kept = _record_selections(method)  # chunks of 128 over 512 tokens: typical budgets evict
        runs.append((_run(model, method, KNOB_CHUNK_SIZE, KNOB_PROMPT_TOKENS), kept))
    (first, first_kept), (second, second_kept) = runs
    assert first.token_ids == second.token_ids, "two runs generated different tokens"
    assert first.stats == second.stats, "two runs measured different footprints"
    differing = next((i for i, (a, b) in enumerate(zip(first_kept, second_kept, strict=True)) if a != b), None)
    assert differing is None, (
        f"two runs kept different entries (decision {differing} of {len(first_kept)}): select() is not deterministic"
    )
    return "two runs: same tokens, footprint and kept entries"


def _record_selections(method: Method) -> list:
    """Every decision of `method` in order: the indices each head kept, or None."""
    decisions: list = []
    decide, decide_across, channels = method.select_layer, method.finish_step, method.select_key_channels

    def select_layer(views):
        answers = decide(views)
        decisions.extend(None if index is None else index.tolist() for index in answers)
        return answers

    def finish_step(phase):  # decisions across layers (CAKE, KVzip)
        decided = decide_across(phase)
        decisions.extend(
            (layer, [None if i is None else i.tolist() for i in decided[layer]]) for layer in sorted(decided)
        )
        return decided

    def select_key_channels(view):  # ThinK
        kept = channels(view)
        decisions.append(None if kept is None else ("channels", kept.tolist()))
        return kept

    method.select_layer, method.finish_step = select_layer, finish_step
    if type(method).select_key_channels is not Method.select_key_channels:
        method.select_key_channels = select_key_channels
    return decisions
