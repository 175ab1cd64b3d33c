"""`simlayerkv`: a layer whose last queries attend mostly to its first and latest entries keeps only those."""

from __future__ import annotations

import math

import pytest
import torch

import kvbench
from kvbench.cache import KVCache
from kvbench.engine import kvbench_attention, prefill
from kvbench.method import KeepView, ModelShape, Phase
from kvbench.methods.simlayerkv import SimLayerKV
from kvbench.testing import assert_conforms

HELD, N_INITIAL, N_RECENT = 20, 2, 3
LOOKED_AT = [0, 1, 17, 18, 19]  # the first 2 and the last 3 of 20 held
LAST_CHUNK = Phase(False, 0, 1)


def view(query_scale=(1.0, 1.0), phase=LAST_CHUNK, held=HELD) -> KeepView:
    """Two KV heads of two query heads each, dimension 4, one new query. The looked-at entries' keys are a * e0 with
    a = ln 27, the others' 0; a query 2 * e0 (scaled by 4 ** -0.5) gives them logit ln 27, the others 0, so that
    five of them take 5 * 27 / (5 * 27 + 15) = 0.9 of its attention. A query scale of 0 attends uniformly: 5 / 20."""
    keys = torch.zeros(2, held, 4)
    keys[:, [0, 1, held - 3, held - 2, held - 1], 0] = math.log(27)
    queries = torch.zeros(2, 2, 1, 4)
    queries[:, :, :, 0] = 2 * torch.tensor(query_scale)[:, None, None]
    return KeepView(
        layer=3,
        group=0,
        heads=[0, 1],
        phase=phase,
        positions=torch.arange(held).expand(2, -1),
        keys=keys,
        values=torch.randn(2, held, 4),
        queries=queries,
        num_new=1,
        scaling=4**-0.5,
    )


def method(**params) -> SimLayerKV:
    made = SimLayerKV(**{"n_initial": N_INITIAL, "n_recent": N_RECENT, **params})
    made.bind(ModelShape(4, 4, 2, 4))
    return made


def test_a_layer_looking_at_its_first_and_latest_entries_is_lazy_and_keeps_exactly_those():
    lazy = method(lazy_threshold=0.85)
    kept = lazy.select(view())
    assert kept.tolist() == [LOOKED_AT, LOOKED_AT]
    assert lazy.layer_shares[3] == pytest.approx(0.9, abs=1e-6) and lazy.lazy_layers == {3}


def test_a_share_at_or_below_the_threshold_keeps_everything():
    busy = method(lazy_threshold=0.95)
    assert busy.select(view()) is None
    assert busy.layer_shares[3] == pytest.approx(0.9, abs=1e-6) and busy.lazy_layers == set()


def test_the_decision_is_the_layers_over_all_its_heads():
    """Head 0 puts 0.9 of its attention on the looked-at entries, head 1 (uniform) 5/20: the layer's share is their
    mean, 0.575, and both heads keep the same entries or none."""
    share = (0.9 + 5 / 20) / 2
    lazy = method(lazy_threshold=0.55)
    assert lazy.select(view(query_scale=(1.0, 0.0))).tolist() == [LOOKED_AT, LOOKED_AT]
    assert lazy.layer_shares[3] == pytest.approx(share, abs=1e-6)
    assert method(lazy_threshold=0.6).select(view(query_scale=(1.0, 0.0))) is None


def test_threshold_one_never_compresses_and_a_short_layer_has_nothing_to_drop():
    keys_on_kept = view(held=6)  # 5 of 6 entries looked at: share 135 / 136, over every threshold below 1
    assert method(lazy_threshold=0.99).select(keys_on_kept) is not None
    assert method(lazy_threshold=1.0).select(keys_on_kept) is None
    short = method(lazy_threshold=0.0)
    assert short.select(view(held=N_INITIAL + N_RECENT)) is None and short.lazy_layers == set()


def test_it_decides_at_prefill_only_and_post_fill_only_after_the_last_chunk():
    assert method(lazy_threshold=0.5).select(view(phase=Phase(True, 0))) is None  # decoding: never
    postfill, chunked = method(lazy_threshold=0.5, schedule="postfill"), method(lazy_threshold=0.5)
    assert postfill.select(view(phase=Phase(False, 0, 2))) is None
    assert chunked.select(view(phase=Phase(False, 0, 2))) is not None
    assert postfill.select(view(phase=Phase(False, 1, 2))) is not None
    assert not postfill.evicts_while_decoding()


def test_bind_forgets_the_last_requests_layers():
    lazy = method(lazy_threshold=0.5)
    lazy.select(view())
    lazy.bind(ModelShape(4, 4, 2, 4))
    assert lazy.lazy_layers == set() and lazy.layer_shares == {}
    assert "lazy_layers" not in lazy.params()  # state, not a parameter


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"lazy_threshold": 1.5}, r"lazy_threshold must be in \[0, 1\]"),
        ({"n_last": 0}, r"n_last must be an integer >= 1; got 0"),
        ({"n_recent": 0}, r"n_recent must be an integer >= 1"),
        ({"n_initial": -1}, r"n_initial must be an integer >= 0"),
        ({"schedule": "patched"}, r"schedule must be one of postfill, chunked"),
    ],
)
def test_bad_parameters_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        kvbench.load_method("simlayerkv", **bad)


@pytest.mark.parametrize(
    "params",
    [
        # chunks of 128 on the kit's random models (attention near uniform): a share of 84/128 = 0.66 is lazy at
        # 0.5 and 0.6 only, so the knob moves the footprint; on its 96-token prompts layers go lazy too
        {"n_recent": 80, "lazy_threshold": 0.5},
        # post-fill over 512 tokens: 384/512 = 0.75
        {"n_recent": 380, "lazy_threshold": 0.5, "schedule": "postfill"},
    ],
    ids=["chunked", "postfill"],
)
def test_simlayerkv_conforms(params):
    assert_conforms("simlayerkv", params)


# ---- on the bundled model: layer 0 reads only the last 36 tokens (lazy), layer 1 looks the fact up (busy) ----


@pytest.fixture(scope="module")
def bundled(bundled_tiny):
    from kvbench.tiny import evaluate

    model, tokenizer = bundled_tiny
    return model, tokenizer, evaluate.samples("synth_recall", tokenizer, 1024, 2)


def bundled_method() -> SimLayerKV:
    # Layer 1's share at a question's end is 0.9 (one query head of ten reads the fact), layer 0's 1.0.
    return SimLayerKV(lazy_threshold=0.95, n_initial=4, n_recent=64, schedule="postfill")


def test_on_the_bundled_model_the_lazy_layer_holds_sink_and_recent_and_the_other_everything(bundled):
    model, tokenizer, samples = bundled
    ids = tokenizer(samples[0]["prompt"], return_tensors="pt").input_ids[0]
    simlayerkv = bundled_method()
    cache = KVCache(ModelShape.from_config(model.config), simlayerkv)
    simlayerkv.bind(cache.shape)
    with kvbench_attention(model), torch.inference_mode():
        prefill(model, cache, ids, chunk_size=256)
    assert simlayerkv.lazy_layers == {0}
    length = len(ids)
    sink_and_recent = torch.cat([torch.arange(4), torch.arange(length - 64, length)])
    for layer, held in enumerate(cache.layers):
        expected = sink_and_recent if layer in simlayerkv.lazy_layers else torch.arange(length)
        assert all(torch.equal(row, expected) for group in held.groups for row in group.positions)


@pytest.mark.slow
def test_on_the_bundled_model_the_answer_survives_with_the_question_and_not_without(bundled):
    """Query-aware, the last query is the question's: layer 1 reads the fact, stays whole, and the answer comes out.
    Query-agnostic, the last query is the context's: nothing to look up, layer 1 looks lazy and loses the fact, which
    full attention answers from the same context."""
    from kvbench.tiny import evaluate

    model, tokenizer, samples = bundled
    for query, lazy, answered in (("aware", {0}, 1.0), ("agnostic", {0, 1}, 0.0)):
        made: list[SimLayerKV] = []

        def make(made=made):  # a fresh method per request, each kept to read its lazy layers
            made.append(bundled_method())
            return made[-1]

        result = evaluate.evaluate(model, tokenizer, "synth_recall", make, prompts=samples, query=query)
        assert result.scores == [answered] * len(samples), query
        assert len(made) == len(samples) and all(method.lazy_layers == lazy for method in made), query
    full = evaluate.evaluate(model, tokenizer, "synth_recall", None, prompts=samples, query="agnostic")
    assert full.scores == [1.0] * len(samples)
