"""`lagkv`: scores a partition's tokens against the next partition's key/value range, whatever the queries."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_prompt, tiny_model

import kvbench
from kvbench.cache import KVCache
from kvbench.engine import kvbench_attention, prefill
from kvbench.method import KeepView, ModelShape, Phase
from kvbench.methods.lagkv import LagKV
from kvbench.testing import assert_conforms

LAST_CHUNK = Phase(False, 0, 1)


def view(keys, values=None, queries=None, num_new=None, phase=LAST_CHUNK) -> KeepView:
    heads, held, dim = keys.shape
    return KeepView(
        layer=0,
        group=0,
        heads=list(range(heads)),
        phase=phase,
        positions=torch.arange(held).expand(heads, -1),
        keys=keys,
        values=torch.zeros_like(keys) if values is None else values,
        queries=torch.randn(heads, 2, 4, dim) if queries is None else queries,
        num_new=held if num_new is None else num_new,
        scaling=dim**-0.5,
    )


# Eight entries, one head, three channels; n_sink 1, lag_size 2: the sink [0], partitions [1, 2] and [3, 4] (each
# scored against the next), the last full partition [5, 6] (no reference) and the partial [7]: the tail.
KEYS = torch.tensor(
    [[[9, 9, 9], [2, 0, 0.5], [1, 2, 0.5], [0, 0, 0], [2, 4, 1], [1, 1, 1], [3, 1, 2], [7, 7, 7]]], dtype=torch.float
)


def hand_scores() -> tuple[list[float], list[float]]:
    """The softmax scores of partitions [1, 2] and [3, 4], normalised by hand. The values are all zero: every value
    channel is constant, so each value score is 1/lag_size = 1/2, and a token's score is (key score + 1/2) / 2."""
    # [3, 4] is [1, 2]'s reference: min (0, 0, 0), range (2, 4, 1).
    first = [torch.tensor(v).std().item() for v in ([1.0, 0.0, 0.5], [0.5, 0.5, 0.5])]
    # [5, 6] is [3, 4]'s: min (1, 1, 1), range (2, 0 -> only shifted, 1).
    second = [torch.tensor(v).std().item() for v in ([-0.5, -1.0, -1.0], [0.5, 3.0, 0.0])]
    assert first[1] == 0 and math.isclose(first[0], 0.5)  # the arithmetic above, checked
    scores = []
    for stds in (first, second):
        total = sum(math.exp(s) for s in stds)
        scores += [(math.exp(s) / total + 0.5) / 2 for s in stds]
    return scores[:2], scores[2:]


def test_cross_scoring_scores_each_partition_against_the_next():
    first, second = hand_scores()
    scores = LagKV(n_sink=1, lag_size=2, cross_scoring=True).score(view(KEYS))
    assert torch.allclose(scores[0, 1:5], torch.tensor(first + second), atol=1e-6)
    assert scores[0, 0] > scores[0, 5:].max() > scores[0, 5:].min() > scores[0, 1:5].max()  # sink, then the tail


def test_ranks_within_a_partition_pick_the_kept_set():
    first, second = hand_scores()
    assert first[0] > first[1] and second[1] > second[0]  # token 1 leads [1, 2], token 4 leads [3, 4]
    scores = LagKV(n_sink=1, lag_size=2).score(view(KEYS))
    assert scores[0, 1:5].tolist() == [0.5, 0.0, 0.0, 0.5]  # rank / lag_size
    # budget 6 of 8: the sink and the tail (4), then the leader of each partition
    kept = LagKV(n_sink=1, lag_size=2, budget=6, recent=0, schedule="postfill").select(view(KEYS))
    assert kept.tolist() == [[0, 1, 4, 5, 6, 7]]


def test_keys_and_values_count_alike():
    keys, values = KEYS, torch.randn_like(KEYS)
    method = LagKV(n_sink=1, lag_size=2, cross_scoring=True)
    assert torch.allclose(method.score(view(keys, values)), method.score(view(values, keys)))


def test_the_sink_and_the_tail_are_always_kept():
    torch.manual_seed(0)
    keys, values = torch.randn(2, 50, 8), torch.randn(2, 50, 8)
    # n_sink 4, lag 8: partitions 4..44, the last of them (36..44) with the partial 44..50 is the tail
    kept = LagKV(n_sink=4, lag_size=8, keep=0.5, recent=0, schedule="postfill").select(view(keys, values))
    always = set(range(4)) | set(range(36, 50))
    for head in kept.tolist():
        assert always <= set(head) and len(head) == 25
        assert len(set(head) - always) == 7  # the rest of keep 0.5's 25 from the scored partitions
    # a smaller budget than the sink and the tail keeps the sink, then the latest
    small = LagKV(n_sink=4, lag_size=8, budget=10, recent=0, schedule="postfill").select(view(keys, values))
    assert small.tolist() == [[0, 1, 2, 3, 44, 45, 46, 47, 48, 49]] * 2


def test_fewer_candidates_than_two_partitions_keep_the_sink_and_the_latest():
    torch.manual_seed(1)
    keys, values = torch.randn(1, 19, 8), torch.randn(1, 19, 8)  # 19 < n_sink + 2 * lag_size = 20
    kept = LagKV(n_sink=4, lag_size=8, budget=10, recent=0, schedule="postfill").select(view(keys, values))
    assert kept.tolist() == [[0, 1, 2, 3, 13, 14, 15, 16, 17, 18]]


def test_a_chunk_is_partitioned_on_its_own():
    """Chunked: the chunk's new entries compete and are partitioned from the chunk's start (its own sink); the
    held past is kept and neither a partition nor a reference."""
    torch.manual_seed(2)
    past, new = torch.randn(1, 30, 8), torch.randn(1, 40, 8)
    values = torch.randn(1, 70, 8)
    method = LagKV(n_sink=4, lag_size=8, keep=0.5, recent=0, schedule="chunked")
    with_past = view(torch.cat([past, new], dim=1), values, num_new=40, phase=Phase(False, 1, 3))
    kept = method.select(with_past)
    alone = method.score(view(new, values[:, 30:]))
    assert torch.equal(with_past_scores(method, with_past)[:, 30:], alone)
    assert set(range(30)) | set(range(30, 34)) <= set(kept[0].tolist())  # the past, and the chunk's sink


def with_past_scores(method: LagKV, keep_view: KeepView) -> torch.Tensor:
    keep_view.candidates = range(keep_view.num_held - keep_view.num_new, keep_view.num_held)
    return method.score(keep_view)


def test_the_kept_set_does_not_depend_on_the_queries():
    torch.manual_seed(3)
    keys, values = torch.randn(2, 60, 8), torch.randn(2, 60, 8)
    method = LagKV(n_sink=2, lag_size=8, keep=0.3, recent=4, schedule="postfill")
    first = method.select(view(keys, values, torch.randn(2, 2, 4, 8)))
    second = method.select(view(keys, values, 10 * torch.randn(2, 2, 4, 8)))
    assert torch.equal(first, second)


def held_positions(model, method, prompt, chunk_size) -> list[torch.Tensor]:
    cache = KVCache(ModelShape.from_config(model.config), method)
    method.bind(cache.shape)
    with kvbench_attention(model), torch.inference_mode():
        prefill(model, cache, prompt, chunk_size)
    return [layer.groups[0].positions for layer in cache.layers]


def test_chunked_and_patched_run_on_a_model_and_keep_the_same_entries():
    """LagKV reads no query, so the patched schedule's scoring tail changes nothing it keeps."""
    model = tiny_model("llama")
    prompt = random_prompt(256)
    held = {}
    for schedule in ("chunked", "patched"):
        method = LagKV(n_sink=4, lag_size=8, keep=0.3, recent=8, obs_window=8, schedule=schedule)
        held[schedule] = held_positions(model, method, prompt, chunk_size=64)
    for chunked, patched in zip(held["chunked"], held["patched"]):
        assert torch.equal(chunked, patched)
    # every chunk of 64 keeps round(0.3 * 64) = 19 by score (its sink 4 and its tail's first 4 among them: the
    # tail is the last full partition, 8, and the partial one, 4) and its last 8 as the recent window
    assert [positions.shape[-1] for positions in held["chunked"]] == [4 * (19 + 8)] * 2
    assert all(set(range(0, 256, 64)) <= set(p.tolist()) for layer in held["chunked"] for p in layer)  # sinks


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"n_sink": -1}, r"n_sink must be an integer >= 0; got -1"),
        ({"lag_size": 1}, r"lag_size must be an integer >= 2"),
        ({"cross_scoring": "maybe"}, r"cross_scoring"),
    ],
)
def test_bad_parameters_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        kvbench.load_method("lagkv", **bad)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["postfill", "chunked", "patched"])
def test_lagkv_conforms(schedule):
    assert_conforms("lagkv", {"keep": 0.3, "recent": 8, "obs_window": 8, "lag_size": 8, "schedule": schedule})
