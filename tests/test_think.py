"""`think`: key channels pruned per KV head after the prompt; entries all kept, in fewer bytes."""

from __future__ import annotations

import pytest
import torch
from conftest import random_prompt, tiny_model

import kvbench
from kvbench.cache import KVCache
from kvbench.engine import forward_step, kvbench_attention, prefill
from kvbench.method import KeepView, ModelShape, Phase
from kvbench.methods.think import ThinK


def test_the_channels_with_the_most_query_times_key_energy_are_kept():
    # one KV head, head_dim 4: mean q^2 per channel 1, 4, 1, 0.25 (two query heads averaged); mean k^2 1, 1, 9, 1
    # -> products 1, 4, 9, 0.25: keeping half keeps channels 1 and 2
    queries = torch.tensor([[[[1.0, 2.0, 1.0, 0.5]], [[-1.0, -2.0, 1.0, -0.5]]]])  # [h, r, w, d]
    keys = torch.tensor([[[1.0, 1.0, 3.0, 1.0], [-1.0, -1.0, -3.0, 1.0]]])  # [h, n, d]
    view = KeepView(
        layer=0,
        group=0,
        heads=[0],
        phase=Phase(False, 0, 1),
        positions=torch.arange(2)[None],
        keys=keys,
        values=torch.zeros_like(keys),
        queries=queries,
        num_new=2,
        scaling=0.5,
    )
    assert ThinK(channel_keep=0.5).select_key_channels(view).tolist() == [[1, 2]]
    assert ThinK(channel_keep=0.75).select_key_channels(view).tolist() == [[0, 1, 2]]  # int(4 x 0.25) = 1 pruned
    assert ThinK(channel_keep=1.0).select_key_channels(view) is None
    not_yet = KeepView(**{**view.__dict__, "phase": Phase(False, 0, 2)})  # before the prompt's last chunk
    assert ThinK(channel_keep=0.5).select_key_channels(not_yet) is None


def test_the_pruned_channels_are_freed_for_the_prompt_and_for_later_entries():
    model = tiny_model("llama", num_key_value_heads=2)
    shape = ModelShape.from_config(model.config)
    full_method, think_method = kvbench.load_method("full"), ThinK(channel_keep=0.5, window_size=8)
    caches = []
    for method in (full_method, think_method):
        method.bind(shape)
        cache = KVCache(shape, method)
        with kvbench_attention(model), torch.inference_mode():
            logits = prefill(model, cache, random_prompt(100), 32)
            forward_step(model, cache, logits.argmax()[None], 100, Phase(True, 0))  # one decode step
        caches.append(cache)
    full, think = caches
    head_dim, itemsize = shape.head_dim, model.dtype.itemsize
    for full_layer, think_layer in zip(full.layers, think.layers):
        group, reference = think_layer.groups[0], full_layer.groups[0]
        channels = group.key_channels
        assert channels.shape == (2, head_dim // 2)
        assert group._keys.read().shape == (1, 2, 101, head_dim // 2)  # stored: half the channels, decode step too
        read = group.keys[0]  # what attention reads: [2, 101, d]
        pruned = torch.ones(2, head_dim, dtype=torch.bool).scatter_(1, channels, False)
        assert not read.masked_select(pruned[:, None, :].expand_as(read)).any()  # zeros in the pruned channels
        as_read = read.gather(-1, channels[:, None, :].expand(-1, 101, -1))
        as_computed = reference.keys[0].gather(-1, channels[:, None, :].expand(-1, 101, -1))
        assert torch.equal(as_read[:, :100], as_computed[:, :100])  # the prompt's keys, kept channels unchanged
    assert think.num_held == full.num_held  # no entry evicted
    assert think.nbytes == think.num_held * (head_dim // 2 + head_dim) * itemsize


def test_the_footprint_counts_the_bytes_of_each_step():
    """One prefill chunk of P tokens held whole (weight 1), then D decode steps over entries of (d/2 + d) / 2d of
    full's bytes: the footprint by hand."""
    model = tiny_model("llama", num_key_value_heads=2)
    prompt, new_tokens = 60, 9
    result = kvbench.generate(
        model,
        random_prompt(prompt),
        ThinK(channel_keep=0.5, window_size=8),
        chunk_size=prompt,
        max_new_tokens=new_tokens,
        eos_token_id=[],
    )
    steps, weight = new_tokens - 1, 0.75  # the last generated token is never fed
    tokens = prompt + steps
    active = prompt * (prompt + 1) / 2 + sum(weight * (prompt + j + 1) for j in range(steps))
    assert result.stats.kv_footprint == pytest.approx(active / (tokens * (tokens + 1) / 2))


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match=r"channel_keep must be in \(0, 1\]"):
        kvbench.load_method("think", channel_keep=0)
    with pytest.raises(ValueError, match="kv_bits must be 16"):
        kvbench.load_method("think", kv_bits=8)


@pytest.mark.slow
def test_conforms():
    from kvbench.testing import assert_conforms

    assert_conforms("think", {"channel_keep": 0.25, "window_size": 8})
