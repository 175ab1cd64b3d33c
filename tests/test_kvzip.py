"""`kvzip`: entries scored by the attention they get while the model repeats the context; the pass is paid apart."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_prompt, tiny_model

import kvbench
from kvbench.method import KeepView, ModelShape, Phase
from kvbench.methods.kvzip import KVzip, _reconstruction_attention
from kvbench.quant import bytes_per_entry


def piece_view(keys: list[float], queries: list[list[float]], piece: int) -> KeepView:
    """One KV head of head_dim 1: held = context entries then the piece's `piece` entries; queries [r][piece]."""
    held = len(keys)
    return KeepView(
        layer=0,
        group=0,
        heads=[0],
        phase=Phase(False, 0, 1, is_extra=True),
        positions=torch.arange(held)[None],
        keys=torch.tensor(keys)[None, :, None],
        values=torch.zeros(1, held, 1),
        queries=torch.tensor(queries)[None, :, :, None],
        num_new=piece,
        scaling=1.0,
    )


def test_a_context_entry_scores_the_attention_the_piece_gives_it():
    # query 1 over the part's keys ln 1, ln 2, ln 3 and the piece's own key ln 4: weights 1/10, 2/10, 3/10 (and 4/10)
    keys = [0.0, math.log(2), math.log(3), math.log(4)]
    scores = _reconstruction_attention(piece_view(keys, [[1.0]], 1), first=0, end=3, sink=0, length=1)
    assert torch.allclose(scores, torch.tensor([0.1, 0.2, 0.3]))


def test_the_most_attention_counts_over_queries_and_query_heads_and_the_sinks_share_the_softmax():
    # context: a sink (key 0) then the part (keys ln 2, ln 3); a piece of 2 entries (keys 0, 0); 2 query heads.
    # Query head 0: its first query (1) sees the sink, the part and the piece's first entry: weights 1, 2, 3, 1,
    # so 2/7 and 3/7 for the part; its second query (0) sees 5 equal entries: 1/5 each. Query head 1 (queries 0, 0):
    # 1/4 and 1/5 each. The most per part entry: 2/7 and 3/7.
    keys = [0.0, math.log(2), math.log(3), 0.0, 0.0]
    queries = [[1.0, 0.0], [0.0, 0.0]]
    scores = _reconstruction_attention(piece_view(keys, queries, 2), first=1, end=3, sink=1, length=2)
    assert torch.allclose(scores, torch.tensor([2 / 7, 3 / 7]))


def finished(scores: torch.Tensor, **params) -> list[list[list[int]]]:
    """The kept indices per layer and head when the reconstruction gave `scores` [layers, heads, context]."""
    method = KVzip(**params)
    method.bind(ModelShape(scores.shape[0], 2 * scores.shape[1], scores.shape[1], 4))
    method.scores = dict(enumerate(scores.clone()))
    decided = method.finish_step(Phase(False, 0, 1, is_extra=True))
    return [[index[0].tolist() for index in decided[layer]] for layer in range(scores.shape[0])]


SCORES = torch.tensor(
    [
        [[0.0, 0.9, 0.8, 0.7], [0.0, 0.1, 0.2, 0.3]],  # layer 0: head 0 sharp, head 1 flat
        [[0.0, 0.05, 0.04, 0.6], [0.0, 0.5, 0.02, 0.01]],
    ]
)


def test_the_kept_share_is_taken_over_all_layers_and_heads_together():
    # 16 entries, keep 0.5 -> evict int(16 x 0.5) = 8; each head's sink (entry 0) scores above all, then the best 4
    # others of all: 0.9, 0.8, 0.7 (layer 0 head 0) and 0.6 (layer 1 head 0)
    assert finished(SCORES, keep=0.5, n_sink=1) == [[[0, 1, 2, 3], [0]], [[0, 3], [0]]]
    # without sinks, the 8 best of all: 0.9, 0.8, 0.7, 0.6, 0.5, 0.3, 0.2, 0.1
    assert finished(SCORES, keep=0.5, n_sink=0) == [[[1, 2, 3], [1, 2, 3]], [[3], [1]]]


def test_layerwise_each_layer_keeps_its_share_over_its_heads():
    # keep 0.5 of each layer's 8: its 2 sinks and its best 2 others
    assert finished(SCORES, keep=0.5, n_sink=1, layerwise=True) == [[[0, 1, 2], [0]], [[0, 3], [0, 1]]]


def test_a_head_is_never_left_empty():
    scores = torch.tensor([[[0.9, 0.8], [0.1, 0.2]]])
    assert finished(scores, keep=0.5, n_sink=0) == [[[0, 1], [1]]]


def test_the_reconstruction_is_the_instruction_and_the_context_in_pieces(bundled_tiny):

    _, tokenizer = bundled_tiny
    context = torch.arange(10, 30)
    method = KVzip(keep=0.5, chunk_length=8)
    pieces = method.extra_inputs(context, tokenizer)
    first = tokenizer.encode("\n\nRepeat the previous context exactly.", add_special_tokens=False)
    later = tokenizer.encode(
        "\n\nRepeat the part of the previous context exactly, starting with", add_special_tokens=False
    )
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert pieces[0].tolist() == first + newline + list(range(10, 18))
    assert pieces[1].tolist() == later + list(range(10, 18)) + newline + list(range(18, 26))
    assert pieces[2].tolist() == later + list(range(18, 26)) + newline + list(range(26, 30))
    assert [(a, b) for a, b, _ in method.pieces] == [(0, 8), (8, 16), (16, 20)]
    assert KVzip(keep=1.0).extra_inputs(context, tokenizer) == []  # keeps everything: no pass to pay
    assert [p.tolist() for p in KVzip(chunk_length=16).extra_inputs(context)] == [
        list(range(10, 26)),
        list(range(18, 30)),  # without a tokenizer: the overlap, then the context
    ]


def test_the_pass_is_paid_apart_and_the_heads_hold_their_own_counts():
    model = tiny_model("llama", num_key_value_heads=2)
    prompt, new_tokens = random_prompt(300), 3
    method = KVzip(keep=0.25, chunk_length=128)
    result = kvbench.generate(model, prompt, method, chunk_size=64, max_new_tokens=new_tokens, eos_token_id=[])
    full = kvbench.generate(model, prompt, kvbench.load_method("full"), chunk_size=64, max_new_tokens=new_tokens)
    assert result.stats.extra_tokens == 300 + 2 * 8  # three pieces, two starting with the previous one's last 8
    assert result.stats.tokens == full.stats.tokens == 302  # the request's own tokens only
    per_entry = bytes_per_entry(model.config.head_dim, model.dtype, 16)
    assert result.stats.kv_peak_bytes == result.stats.kv_entries * per_entry
    # held whole while prefilling, then a quarter of it: less than full attention, by the decode steps only
    assert result.stats.kv_footprint < full.stats.kv_footprint == 1.0
    # the peak: the prompt in both layers' two heads, and the longest piece (8 + 128) in one layer's (each layer
    # drops a piece's entries before the next layer runs)
    assert result.stats.kv_entries == 2 * 2 * 300 + 2 * (8 + 128)


def test_after_the_pass_a_quarter_of_all_entries_is_held_in_ragged_heads():
    from kvbench.cache import KVCache
    from kvbench.engine import kvbench_attention, prefill

    model = tiny_model("llama", num_key_value_heads=2)
    method = KVzip(keep=0.25, chunk_length=128)
    shape = ModelShape.from_config(model.config)
    method.bind(shape)
    cache = KVCache(shape, method)
    with kvbench_attention(model), torch.inference_mode():
        prefill(model, cache, random_prompt(300), 64)
    counts = [group.num_held for layer in cache.layers for group in layer.groups]
    assert sum(counts) == 4 * 300 - int(4 * 300 * 0.75)
    assert len(set(counts)) > 1, counts  # shared over layers and heads by score, not evenly
    assert cache.layers[0].tokens_seen == 300  # the pass does not move the request's positions


@pytest.mark.parametrize(
    "params, message", [({"keep": 0}, r"keep must be in \(0, 1\]"), ({"chunk_length": 0}, "chunk_length must be")]
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        kvbench.load_method("kvzip", **params)


@pytest.mark.slow
@pytest.mark.parametrize("params", [{}, {"layerwise": True, "chunk_length": 32}])
def test_conforms(params):
    from kvbench.testing import assert_conforms

    assert_conforms("kvzip", params)
