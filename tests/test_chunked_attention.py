"""Chunked prefill without a chunk x held mask: the same logits as one chunk, by both paths (the fused CPU kernels
merged by log-sum-exp, and query blocks where no kernel returns it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import random_prompt, tiny_model
from greedy import assert_same_greedy

from kvbench import attention, generate
from kvbench.method import ModelShape
from kvbench.methods.duoattention import DuoAttention
from kvbench.methods.full import Full

PROMPT_LEN, NEW_TOKENS = 150, 4


@pytest.fixture(params=["fused", "query blocks"])
def path(request, monkeypatch):
    if request.param == "query blocks":
        monkeypatch.setattr(attention, "_flash_cpu", None)
        monkeypatch.setattr(attention, "QUERY_BLOCK", 16)  # several blocks per chunk
    return request.param


def reference(query, keys, values, past, scaling):
    mask = torch.ones(query.shape[2], keys.shape[2], dtype=torch.bool).tril(diagonal=past)
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scaling,
                                          enable_gqa=query.shape[1] != keys.shape[1])


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("past, new", [(1, 1), (5, 37), (300, 64), (40, 200)])
def test_a_chunk_over_held_and_own_entries_equals_the_masked_attention(path, heads, kv_heads, past, new):
    torch.manual_seed(0)
    query = torch.randn(1, heads, new, 16)
    keys, values = torch.randn(1, kv_heads, past + new, 16), torch.randn(1, kv_heads, past + new, 16)
    if path == "fused":
        got = attention._past_then_own(query, keys, values, past, 0.25)
    else:
        got = attention._in_query_blocks(query, keys, values, past, 0.25, heads != kv_heads)
    torch.testing.assert_close(got, reference(query, keys, values, past, 0.25), atol=1e-5, rtol=1e-5)


def one_chunk_and_chunked(model, method_factory, chunk_size, prompt):
    run = dict(max_new_tokens=NEW_TOKENS, eos_token_id=[], return_logits=True)
    whole = generate(model, prompt, method_factory(), chunk_size=len(prompt), **run)
    chunked = generate(model, prompt, method_factory(), chunk_size=chunk_size, **run)
    return whole, chunked


@pytest.mark.parametrize("family, settings", [("llama", {}), ("qwen2", {}), ("mistral", {"sliding_window": 40})])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_prefill_gives_the_logits_of_one_chunk(path, family, settings, chunk_size):
    model = tiny_model(family, head_dim=16, **settings)  # GQA: 4 query heads over 2 KV heads
    whole, chunked = one_chunk_and_chunked(model, Full, chunk_size, random_prompt(PROMPT_LEN, seed=3))
    assert_same_greedy(chunked.token_ids, chunked.logits, whole.token_ids, whole.logits, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_head_groups_attend_chunks_as_one(path, chunk_size, tmp_path):
    """DuoAttention stores full and streaming heads apart; with a window longer than the prompt nothing is evicted,
    so two groups attending chunk by chunk must give one chunk's logits."""
    (tmp_path / "gates.tsv").write_text("0.9\t0.1\n0.2\t0.8\n")
    model = tiny_model("llama", head_dim=16)
    method = lambda: DuoAttention(pattern=str(tmp_path / "gates.tsv"), head_sparsity=0.5, sink=4, window=10_000)  # noqa: E731
    assert len(method().head_groups(0, ModelShape.from_config(model.config))) == 2
    whole, chunked = one_chunk_and_chunked(model, method, chunk_size, random_prompt(PROMPT_LEN, seed=4))
    assert_same_greedy(chunked.token_ids, chunked.logits, whole.token_ids, whole.logits, atol=2e-5, rtol=1e-5)
