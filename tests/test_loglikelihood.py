"""Log-likelihood under eviction (DESIGN.md): the context runs through the method as a generation prompt would,
evicted as the method evicts after a prompt; the continuation is then scored against what was kept."""

from __future__ import annotations

import pytest
import torch
from conftest import random_prompt, tiny_model

from kvbench import engine
from kvbench.cache import KVCache
from kvbench.engine import forward_step, kvbench_attention, prefill, score_continuation
from kvbench.method import ModelShape, Phase
from kvbench.methods.full import Full
from kvbench.methods.h2o import H2O
from kvbench.methods.snapkv import SnapKV
from kvbench.methods.streamingllm import StreamingLLM

CONTEXT = random_prompt(240, seed=3)
CONTINUATIONS = (random_prompt(6, seed=4), random_prompt(6, seed=5))


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=1)


def token_by_token(model, method, context, continuation, chunk_size):
    """The reference: prefill the context under the method, then feed the continuation one decode step at a time."""
    shape = ModelShape.from_config(model.config)
    method.bind(shape)
    cache = KVCache(shape, method)
    logits = []
    with kvbench_attention(model), torch.inference_mode():
        logits.append(prefill(model, cache, context, chunk_size))
        for step, token in enumerate(continuation[:-1]):
            logits.append(forward_step(model, cache, token[None], len(context) + step, Phase(True, step)))
    logprobs = torch.stack(logits).float().log_softmax(-1)
    return float(logprobs.gather(1, continuation[:, None]).sum()), cache


@pytest.mark.parametrize("chunk_size", [64, 1000])
def test_post_fill_eviction_changes_the_log_likelihood_and_equals_token_by_token_decoding(model, chunk_size):
    continuation = CONTINUATIONS[0]
    full = score_continuation(model, CONTEXT, continuation, Full(), chunk_size=chunk_size)
    method = SnapKV(keep=0.1, schedule="postfill")
    evicted = score_continuation(model, CONTEXT, continuation, method, chunk_size=chunk_size)
    # Fed with the context, the continuation would be part of the "prompt" and see the full cache: the old bug
    # gave exactly full attention's log-likelihood.
    assert abs(evicted.logprob - full.logprob) > 1e-3
    reference, cache = token_by_token(model, SnapKV(keep=0.1, schedule="postfill"), CONTEXT, continuation, chunk_size)
    assert evicted.logprob == pytest.approx(reference, abs=1e-4)
    # what was kept: round(0.1 x 240) by score + the 64 recent, then the 5 fed continuation tokens
    assert cache.layers[0].groups[0].num_held == 24 + 64 + 5
    assert evicted.stats.tokens == 240 + 5


@pytest.mark.parametrize(
    "method", [StreamingLLM(sink=4, window=32), H2O(budget=96, recent=16)], ids=["streamingllm", "h2o-budget"]
)
def test_methods_that_evict_while_decoding_score_the_continuation_token_by_token(model, method):
    continuation = CONTINUATIONS[1]
    got = score_continuation(model, CONTEXT, continuation, method, chunk_size=64)
    fresh = type(method)(**method.params())
    reference, _ = token_by_token(model, fresh, CONTEXT, continuation, 64)
    assert got.logprob == pytest.approx(reference, abs=1e-4)


def test_patched_scoring_tail_comes_from_the_context_alone(model, monkeypatch):
    """Two continuations leave the same kept context entries: the candidate answer never decides what is kept."""
    kept = []
    real_prefill = engine.prefill

    def recording_prefill(model, cache, ids, chunk_size, kernel=None, tokenizer=None):
        logits = real_prefill(model, cache, ids, chunk_size, kernel, tokenizer)
        kept.append([group.positions.clone() for layer in cache.layers for group in layer.groups])
        return logits

    monkeypatch.setattr(engine, "prefill", recording_prefill)
    for continuation in CONTINUATIONS:
        score_continuation(
            model, CONTEXT, continuation, SnapKV(keep=0.1, schedule="patched", obs_window=16, recent=8), chunk_size=64
        )
    first, second = kept
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert first[0].shape[-1] < len(CONTEXT)  # something was evicted
    # The check can fail: with each continuation appended to the prompt (the old behaviour), the scoring tail
    # differs and so do the kept entries.
    kept.clear()
    for continuation in CONTINUATIONS:
        with kvbench_attention(model), torch.inference_mode():
            method = SnapKV(keep=0.1, schedule="patched", obs_window=16, recent=8)
            shape = ModelShape.from_config(model.config)
            method.bind(shape)
            cache = KVCache(shape, method)
            recording_prefill(model, cache, torch.cat([CONTEXT, continuation]), 64)
    early = [(a[a < 192], b[b < 192]) for a, b in zip(*kept, strict=True)]  # kept from the first three chunks
    assert not all(torch.equal(a, b) for a, b in early)


def test_a_method_that_evicts_while_decoding_after_saying_it_never_does_is_refused(model):
    class Liar(StreamingLLM):
        def evicts_while_decoding(self) -> bool:
            return False

    with pytest.raises(ValueError, match="evicts_while_decoding"):
        score_continuation(model, CONTEXT, CONTINUATIONS[0], Liar(sink=4, window=32), chunk_size=64)
