"""`adakv`: a layer's budget spread over its KV heads by the scores of all of them, stored ragged (one group per head)."""

from __future__ import annotations

import pytest
import torch
from conftest import random_prompt, tiny_model

import kvbench
from kvbench.cache import KVCache
from kvbench.engine import kvbench_attention, prefill
from kvbench.method import KeepView, ModelShape, Phase
from kvbench.quant import bytes_per_entry


def one_head_view(group: int, held: int) -> KeepView:
    return KeepView(
        layer=0,
        group=group,
        heads=[group],
        phase=Phase(False, 0, 1),
        positions=torch.arange(held)[None],
        keys=torch.randn(1, held, 4),
        values=torch.randn(1, held, 4),
        queries=torch.randn(1, 2, 3, 4),
        num_new=held,
        scaling=0.5,
    )


def decide(scores: list[list[float]], **params) -> list[list[int]]:
    """The kept indices of each one-head group when the scorer gives `scores` (one row per head)."""
    method = kvbench.load_method("adakv", schedule="postfill", **params)
    method.inner.score = lambda view: torch.tensor([scores[view.group]])
    views = [one_head_view(group, len(row)) for group, row in enumerate(scores)]
    answers = method.select_layer(views)
    return [list(range(len(row))) if index is None else index[0].tolist() for row, index in zip(scores, answers)]


FOCUSED = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0]  # a head whose entries all score above the other's
SPREAD = [1.0, 0.05, 0.04, 0.03, 0.02, 0.01]


def test_the_layer_budget_goes_to_the_best_scores_of_all_heads():
    # budget 3 per head, 6 for the layer: without a safeguard all six go to the focused head
    assert decide([FOCUSED, SPREAD], budget=3, recent=0, alpha_safeguard=0.0) == [[0, 1, 2, 3, 4, 5], []]


def test_the_safeguard_keeps_each_heads_own_best_first():
    # alpha 0.34 of a uniform hold of 3 = 1 entry per head by its own scores; the other 4 by the layer's ranking
    assert decide([FOCUSED, SPREAD], budget=3, recent=0, alpha_safeguard=0.34) == [[0, 1, 2, 3, 4], [0]]
    # alpha 1: every head keeps its uniform share, which is per-head top-k (snapkv's own choice)
    assert decide([FOCUSED, SPREAD], budget=3, recent=0, alpha_safeguard=1.0) == [[0, 1, 2], [0, 1, 2]]


def test_the_recent_window_is_kept_by_every_head_and_counts_in_the_safeguard():
    # budget 4 with a recent window of 1: k = 3 per head by score, the last entry of each head kept anyway;
    # the safeguard int(0.5 x (3 + 1)) = 2 counts the window entry, so 1 more of the spread head's own.
    assert decide([FOCUSED, SPREAD], budget=4, recent=1, alpha_safeguard=0.5) == [[0, 1, 2, 3, 4, 5], [0, 5]]


def test_nothing_is_evicted_when_the_budget_holds_everything():
    method = kvbench.load_method("adakv", budget=6, recent=0, schedule="postfill")
    assert method.select_layer([one_head_view(0, 6), one_head_view(1, 6)]) == [None, None]


def prefilled(model, method, length: int, prompt: torch.Tensor | None = None) -> KVCache:
    shape = ModelShape.from_config(model.config)
    method.bind(shape)
    cache = KVCache(shape, method)
    with kvbench_attention(model), torch.inference_mode():
        prefill(model, cache, random_prompt(length) if prompt is None else prompt, length)
    return cache


def test_per_head_budgets_are_physical_bytes():
    """Ragged storage: each KV head holds its own count, the bytes are those entries' and no more, and at keep 0.25
    the cache holds at most 0.27 of full attention's bytes (kvpress's AdaKVPress holds all of them, masked)."""
    model = tiny_model("llama", num_key_value_heads=4, num_attention_heads=8, max_position_embeddings=4096)
    length = 4096
    full = prefilled(model, kvbench.load_method("full"), length)
    ada = prefilled(model, kvbench.load_method("adakv", keep=0.25, recent=64, schedule="postfill"), length)
    per_entry = bytes_per_entry(model.config.head_dim, model.dtype, 16)
    counts = [[group.num_held for group in layer.groups] for layer in ada.layers]
    assert all(len(layer.groups) == 4 and all(len(g.heads) == 1 for g in layer.groups) for layer in ada.layers)
    assert any(len(set(layer)) > 1 for layer in counts), f"every head kept the same count: {counts}"
    for layer in counts:  # the layer as a whole keeps what a uniform split would: k x heads by score + the window
        assert sum(layer) == 4 * (round(0.25 * length) + 64)
    assert ada.nbytes == ada.num_held * per_entry == sum(map(sum, counts)) * per_entry
    assert ada.nbytes / full.nbytes <= 0.27


@pytest.mark.parametrize("schedule", ["postfill", "chunked", "patched"])
def test_the_ledger_counts_ragged_heads_exactly(schedule):
    model = tiny_model("llama", num_key_value_heads=2)
    result = kvbench.generate(
        model,
        random_prompt(300),
        kvbench.load_method("adakv", keep=0.2, recent=8, obs_window=8, schedule=schedule),
        chunk_size=64,
        max_new_tokens=3,
        eos_token_id=[],
    )
    per_entry = bytes_per_entry(model.config.head_dim, model.dtype, 16)
    assert result.stats.kv_peak_bytes == result.stats.kv_entries * per_entry
    assert 0 < result.stats.kv_footprint < 1


def test_the_scorer_and_its_own_parameters_come_flat():
    method = kvbench.load_method("adakv", scorer="snapkv", keep=0.25, obs_window=32, kernel=7)
    assert method.inner.kernel == 7 and method.inner.obs_window == 32 and method.inner.keep == 0.25
    assert method.params()["kernel"] == 7 and "scorer_params" not in method.params()
    assert kvbench.load_method("adakv", **method.params()).params() == method.params()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"kernel": 4}, "kernel must be an odd integer"),
        ({"window_size": 4}, "scorer 'snapkv': method 'snapkv' has no parameter 'window_size'"),
        ({"scorer": "h2o"}, "scorer must be a score method that only scores"),
        ({"scorer": "nothing"}, "unknown method 'nothing'; known methods: adakv"),
        ({"alpha_safeguard": 1.5}, r"alpha_safeguard must be in \[0, 1\]"),
    ],
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        kvbench.load_method("adakv", **params)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["postfill", "chunked", "patched"])
def test_conforms(schedule):
    from kvbench.testing import assert_conforms

    assert_conforms("adakv", {"schedule": schedule})


def planted_needle_model():
    """One layer, two KV heads (one query head each) with weights set by hand: head 0's queries look for the needle
    token (its key grows with the needle's feature), head 1's queries are zero, so it attends evenly to everything.
    The signal sits on the slowest RoPE pair, which barely turns over a few hundred positions."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=16,
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        attention_bias=True,
        rope_theta=1e9,
        max_position_embeddings=1024,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    attention = model.model.layers[0].self_attn
    with torch.no_grad():
        embeddings = 0.1 * torch.randn(16, 16)  # every token distinct
        embeddings[NEEDLE, 0] = 3.0  # the needle's feature
        model.model.embed_tokens.weight.copy_(embeddings)
        for projection in (attention.q_proj, attention.k_proj):
            projection.weight.zero_()
            projection.bias.zero_()
        attention.q_proj.bias[3] = 4.0  # head 0 queries along dim 3 (the slowest RoPE pair with dim 7)
        attention.k_proj.weight[3, 0] = 4.0  # head 0's key along dim 3 follows the needle feature
        attention.k_proj.weight[8:, 1:] = 0.01 * torch.randn(8, 15)  # head 1: small keys, near-even attention
    return model


NEEDLE = 1


def test_adakv_keeps_a_planted_needle_that_uniform_per_head_budgets_lose():
    """At the same budget (12 per head: the recent 8 + 4 by score), snapkv's uniform split lets head 0 keep only 4 of
    the 6 needle tokens it attends to; Ada-KV gives head 0 the budget head 1 (attending evenly) does not need."""
    model = planted_needle_model()
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(2, 16, (400,), generator=generator)
    needle = list(range(150, 156))
    prompt[needle] = NEEDLE
    settings = dict(budget=12, recent=8, obs_window=8, kernel=1, schedule="postfill")
    uniform = prefilled(model, kvbench.load_method("snapkv", **settings), len(prompt), prompt)
    adaptive = prefilled(model, kvbench.load_method("adakv", alpha_safeguard=0.2, **settings), len(prompt), prompt)
    head_0_uniform = set(uniform.layers[0].groups[0].positions[0].tolist())
    head_0_adaptive = set(adaptive.layers[0].groups[0].positions[0].tolist())
    assert len(head_0_uniform & set(needle)) == 4  # a uniform share of 4 cannot hold the needle
    assert set(needle) <= head_0_adaptive  # the whole needle, from head 1's share
    assert adaptive.num_held == uniform.num_held  # the same total: only its split differs
