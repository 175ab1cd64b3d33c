"""`cake`: the layers' total budget split by each layer's attention dispersion and shift, each layer keeping its share
by the window's mean + gamma x variance of attention; decided once every layer has attended (finish_step)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_prompt, tiny_model

import kvbench
from kvbench.cache import KVCache
from kvbench.engine import kvbench_attention, prefill
from kvbench.method import KeepView, ModelShape, Phase
from kvbench.methods.cake import split_budget
from kvbench.quant import bytes_per_entry

LAST_CHUNK = Phase(False, 0, 1)


def window_view(layer: int, rows: list[list[dict[int, float]]], held: int) -> KeepView:
    """One KV head, one query head per row of `rows`, whose window queries (the last len(rows[0]) held entries) give
    exactly the attention weights asked for ({entry: weight}, the rest 0): one-hot keys, queries the log-weights."""
    heads, window = len(rows), len(rows[0])
    queries = torch.full((1, heads, window, held), -1e4)  # exp(-1e4 - max) is 0 in fp32: weight 0, entropy term 0
    for head, row in enumerate(rows):
        for query, weights in enumerate(row):
            assert math.isclose(sum(weights.values()), 1.0) and max(weights) <= held - window + query
            for entry, weight in weights.items():
                queries[0, head, query, entry] = math.log(weight)
    return KeepView(
        layer=layer,
        group=0,
        heads=[0],
        phase=LAST_CHUNK,
        positions=torch.arange(held)[None],
        keys=torch.eye(held)[None],
        values=torch.randn(1, held, 4),
        queries=queries,
        num_new=window,
        scaling=1.0,
    )


# Two layers, 10 held, window (obs_window = recent = 2) at 8 and 9, the pool 0..7; only entries 0 and 1 of the pool
# draw attention. Over the pool's columns:
#   A: query 8 gives (0.5, 0.25), query 9 (0.25, 0.25): D = -(0.5 ln 0.5 + 3 x 0.25 ln 0.25) = 2 ln 2,
#      S = var(0.5, 0.25) + var(0.25, 0.25) = 0.25^2 / 2 = 0.03125 (unbiased over the two queries);
#   B: query 8 gives (0.25, 0.5), query 9 (0.125, 0.125): D = 0.5 ln 2 + 0.5 ln 2 + 2 x 0.125 ln 8 = 1.75 ln 2,
#      S = 0.125^2 / 2 + 0.375^2 / 2 = 0.078125.
LAYER_A = [[{0: 0.5, 1: 0.25, 8: 0.25}, {0: 0.25, 1: 0.25, 8: 0.25, 9: 0.25}]]
LAYER_B = [[{0: 0.25, 1: 0.5, 8: 0.25}, {0: 0.125, 1: 0.125, 8: 0.25, 9: 0.5}]]
LN2 = math.log(2)


def cake(**params):
    return kvbench.load_method("cake", **{"recent": 2, "obs_window": 2, "kernel": 1, "schedule": "postfill", **params})


def test_a_layers_preference_is_its_dispersion_and_shift_by_hand():
    pool = range(0, 8)
    for rows, dispersion, shift in ((LAYER_A, 2 * LN2, 0.03125), (LAYER_B, 1.75 * LN2, 0.078125)):
        view = window_view(0, rows, 10)
        assert cake().preference([view], pool).item() == pytest.approx(dispersion * shift, rel=1e-5)
        # P = D^(1/tau1) x S^(1/tau2)
        got = cake(tau1=2.0, tau2=0.5).preference([view], pool).item()
        assert got == pytest.approx(dispersion**0.5 * shift**2, rel=1e-5)


def decide(method, layers: list[list], held: int = 10) -> dict[int, list[int]]:
    """Each layer scored in turn (keeping everything), then the step's end: the kept held indices of each layer."""
    for layer, rows in enumerate(layers):
        assert method.select_layer([window_view(layer, rows, held)]) == [None]  # nothing evicted before the end
    decided = method.finish_step(LAST_CHUNK)
    return {layer: answers[0][0].tolist() for layer, answers in decided.items()}


def test_the_total_budget_is_split_in_proportion_to_the_preferences():
    # budget 6 = recent 2 + 4 by score: a total of 8 over the two layers. P_B / P_A = (1.75 x 0.078125) / (2 x
    # 0.03125) = 2.1875: shares 8 / 3.1875 = 2.51 and 5.49, rounded down to 2 and 5, the remainder to the first: 3, 5.
    kept = decide(cake(budget=6), [LAYER_A, LAYER_B])
    assert [len(kept[0]) - 2, len(kept[1]) - 2] == [3, 5]
    assert {0, 1, 8, 9} <= set(kept[0]) and {0, 1, 8, 9} <= set(kept[1])
    # tau1 2, tau2 0.5: P_A = sqrt(2 ln 2) x 0.03125^2 = 0.00115, P_B = sqrt(1.75 ln 2) x 0.078125^2 = 0.00672:
    # 8 x 0.146 = 1.17 and 6.83, so 1 and 6, the remainder to the first: 2, 6 (swapped exponents would give 4, 4)
    kept = decide(cake(budget=6, tau1=2.0, tau2=0.5), [LAYER_A, LAYER_B])
    assert [len(kept[0]) - 2, len(kept[1]) - 2] == [2, 6]


def test_nothing_is_evicted_when_the_layers_can_keep_everything():
    assert decide(cake(budget=10), [LAYER_A, LAYER_B]) == {}
    assert decide(cake(keep=1.0), [LAYER_A, LAYER_B]) == {}


def test_the_split_follows_the_references_rounding_and_caps():
    assert split_budget([1.0, 3.0], 8, [10, 10]) == [2, 6]
    assert split_budget([1.0, 1.0, 1.0], 10, [10, 10, 10]) == [4, 3, 3]  # floors 3, 3, 3; the remainder to the first
    assert split_budget([1.0, 9.0], 10, [8, 8]) == [2, 8]  # 9 capped at 8: its excess goes to the other layer
    # shares 3.2, 3.2, 2.2, 11.4: floors 3, 3, 2, 11, the last capped at 10; first its excess (to the first layer),
    # then the rounding's 1 (to the first again), as the reference's two passes: not 4, 4, 2, 10 in one
    assert split_budget([3.2, 3.2, 2.2, 11.4], 20, [10, 10, 10, 10]) == [5, 3, 2, 10]
    # floors 0, 10, 21; 21 capped at 12, its 9 spread evenly over the two below their cap (5, 4, one more to the first)
    # pushes the second past its cap: the reference clips it there and keeps 31 of 33; here it goes to the first
    assert split_budget([1.0, 50.0, 100.0], 33, [12, 12, 12]) == [9, 12, 12]
    assert split_budget([0.0, 0.0], 6, [8, 8]) == [3, 3]  # no preference at all: an even split
    assert split_budget([1.0, 1.0], 30, [4, 20]) == [4, 20]  # more than the layers can evict: all of it


# One layer, 6 held, the window at 4 and 5, the pool 0..3. Over the pool's columns query 4 gives (0.2, 0.05, 0.1,
# 0.3), query 5 (0.2, 0.25, 0.1, 0.3): means (0.2, 0.15, 0.1, 0.3), and only entry 1 shifts, variance 0.2^2 / 2 = 0.02.
SHIFTING = [[{0: 0.2, 1: 0.05, 2: 0.1, 3: 0.3, 4: 0.35}, {0: 0.2, 1: 0.25, 2: 0.1, 3: 0.3, 4: 0.05, 5: 0.1}]]


def test_the_indicator_ranks_by_mean_plus_gamma_times_variance():
    # gamma 200: (0.2, 0.15 + 200 x 0.02 = 4.15, 0.1, 0.3), the window 0
    scores = cake(gamma=200.0).score(window_view(0, SHIFTING, 6))
    assert scores[0].tolist() == pytest.approx([0.2, 4.15, 0.1, 0.3, 0.0, 0.0], abs=1e-5)
    # keeping 2 of the 4 by score: the shifting entry 1 and entry 3; by the mean alone (gamma 0), entries 0 and 3
    assert decide(cake(budget=4, gamma=200.0), [SHIFTING], held=6) == {0: [1, 3, 4, 5]}
    assert decide(cake(budget=4, gamma=0.0), [SHIFTING], held=6) == {0: [0, 3, 4, 5]}


def test_the_indicator_is_pooled_over_the_pool_only_and_averaged_over_query_heads():
    # kernel 5, zero padding at the pool's edges (the window's columns never leak in): (x0 + x1 + x2) / 5, ...
    x = [0.2, 4.15, 0.1, 0.3]
    pooled = [sum(x[max(0, j - 2) : j + 3]) / 5 for j in range(4)]
    scores = cake(kernel=5).score(window_view(0, SHIFTING, 6))
    assert scores[0, :4].tolist() == pytest.approx(pooled, abs=1e-5) and scores[0, 4:].tolist() == [0.0, 0.0]
    # a KV head's indicator is its query heads' mean: beside a head attending uniformly (means (0.2 + 1/6) / 2,
    # variance (0.2 - 1/6)^2 / 2 on each pool entry: 0.1833 + 200 x 0.000556 = 0.2944), (0.2 + 0.2944) / 2, ...
    uniform = [{entry: 0.2 for entry in range(5)}, {entry: 1 / 6 for entry in range(6)}]
    both = cake().score(window_view(0, SHIFTING + [uniform], 6))
    assert both[0, :4].tolist() == pytest.approx([(value + 0.29444) / 2 for value in x], abs=1e-5)


def prefilled(model, method, length: int, chunk_size: int) -> KVCache:
    shape = ModelShape.from_config(model.config)
    method.bind(shape)
    cache = KVCache(shape, method)
    with kvbench_attention(model), torch.inference_mode():
        prefill(model, cache, random_prompt(length), chunk_size)
    return cache


def test_layers_keep_their_shares_of_the_total_after_the_prompt():
    model = tiny_model("llama", num_hidden_layers=4)
    cache = prefilled(model, cake(keep=0.25, recent=16, obs_window=16, kernel=5), 512, 128)
    counts = [layer.groups[0].num_held for layer in cache.layers]
    assert len(set(counts)) > 1, f"every layer kept the same count: {counts}"
    assert sum(count - 16 for count in counts) == 4 * round(0.25 * 512)  # the total: 4 layers x the mean share
    per_entry = bytes_per_entry(model.config.head_dim, model.dtype, 16)
    assert cache.nbytes == cache.num_held * per_entry == sum(counts) * 2 * per_entry


def test_chunked_every_chunk_splits_its_own_total():
    # chunks of 64, 64, 64, 64, 44 keep 16, 16, 16, 16, 11 per layer by score, and the recent 8 of each, over 2 layers
    model = tiny_model("llama")
    cache = prefilled(model, cake(keep=0.25, recent=8, obs_window=8, schedule="chunked"), 300, 64)
    counts = [layer.groups[0].num_held for layer in cache.layers]
    assert counts[0] != counts[1] and sum(counts) == 2 * (16 * 4 + 11) + 2 * 8 * 5


def test_every_layer_holds_the_whole_prompt_until_the_step_ends():
    """The measured peak shows that the layers are evicted together at the step's end: post-fill, every layer holds
    the whole prompt at once (snapkv evicts each layer right after it attends)."""
    model = tiny_model("llama", num_hidden_layers=3)
    run = dict(chunk_size=64, max_new_tokens=2, eos_token_id=[])
    params = dict(keep=0.25, recent=8, obs_window=8, schedule="postfill")
    stats = kvbench.generate(model, random_prompt(200), cake(**params, kernel=5), **run).stats
    snap = kvbench.generate(model, random_prompt(200), kvbench.load_method("snapkv", **params), **run).stats
    assert stats.kv_entries == 3 * 2 * 200 > snap.kv_entries
    assert stats.kv_peak_bytes == stats.kv_entries * bytes_per_entry(model.config.head_dim, model.dtype, 16)


@pytest.mark.parametrize("schedule", ["chunked", "patched"])
def test_the_ledger_counts_what_each_layer_holds(schedule):
    model = tiny_model("llama")
    result = kvbench.generate(
        model,
        random_prompt(300),
        cake(keep=0.2, recent=8, obs_window=8, kernel=5, schedule=schedule),
        chunk_size=64,
        max_new_tokens=3,
        eos_token_id=[],
    )
    per_entry = bytes_per_entry(model.config.head_dim, model.dtype, 16)
    assert result.stats.kv_peak_bytes == result.stats.kv_entries * per_entry
    assert 0 < result.stats.kv_footprint < 0.6


@pytest.mark.parametrize(
    "params, message",
    [
        ({"tau1": 0}, "tau1 must be a number > 0"),
        ({"tau2": -1.0}, "tau2 must be a number > 0"),
        ({"gamma": -1}, "gamma must be a number >= 0"),
        ({"kernel": 4}, "kernel must be an odd integer"),
        ({"obs_window": 1}, "obs_window must be an integer >= 2"),
        ({"tau1": "x"}, "parameter 'tau1' of method 'cake' must be float"),
    ],
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        kvbench.load_method("cake", **params)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["postfill", "chunked", "patched"])
def test_conforms(schedule):
    from kvbench.testing import assert_conforms

    assert_conforms("cake", {"keep": 0.3, "recent": 8, "obs_window": 8, "schedule": schedule})


def test_another_scorer_ranks_within_the_layers_and_cake_still_splits_the_budget():
    """`scorer=snapkv`: the layer budgets are CAKE's (from its preferences, whatever ranks the entries), the entries
    each layer keeps are snapkv's best, and snapkv's own parameters come flat."""
    model = tiny_model("llama", num_hidden_layers=3)
    settings = dict(keep=0.2, recent=8, obs_window=8, schedule="postfill")
    own = prefilled(model, kvbench.load_method("cake", **settings), 400, 400)
    snap = kvbench.load_method("cake", scorer="snapkv", kernel=3, **settings)
    assert snap.inner.kernel == 3 and snap.params()["scorer"] == "snapkv"
    other = prefilled(model, snap, 400, 400)
    counts = [[g.num_held for g in layer.groups] for layer in own.layers]
    assert [[g.num_held for g in layer.groups] for layer in other.layers] == counts
    assert len({sum(layer) for layer in counts}) > 1  # the layers' shares differ: CAKE's split, not a uniform one
    kept = [g.positions.tolist() for layer in other.layers for g in layer.groups]
    assert kept != [g.positions.tolist() for layer in own.layers for g in layer.groups]  # ranked by another score
    with pytest.raises(ValueError, match="has no parameter 'beta'"):
        kvbench.load_method("cake", beta=3)  # pyramidkv's, without scorer=pyramidkv
