"""Mixed attention for head-pattern training: per KV head, z * full + (1 - z) * streaming.

Registered with transformers as "kvbench_mixed". The gates of the current step travel with the forward
call (`model(ids, kvbench_mix=Mix(...))`; transformers hands extra keyword arguments to the attention
function), so the same model can be run with sampled, deterministic or all-open gates, under gradient
checkpointing and accelerate's wrappers alike.

Streaming attention is what a streaming head sees at inference: the first `sink` tokens, the `window`
tokens before the query, and the query's own (kvbench's decode step attends over the held sinks + window
and the entry just appended; tests/test_prulong.py checks the two agree). It is computed in query blocks, each against only the keys it
can see, so memory grows with block x (window + sink), not with the square of the sequence: long training
sequences fit. Full attention is plain causal sdpa (flash / memory-efficient kernels on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from kvbench.attention import attention_implementation, no_mask, require_attention_interface
from kvbench.methods.streamingllm import check_sink_and_window

MIXED_ATTENTION = "kvbench_mixed"


@dataclass
class Mix:
    gates: torch.Tensor  # [layers, kv_heads] in [0, 1]: 1 = full attention, 0 = streaming
    sink: int
    window: int
    block: int = 1024  # queries per streaming block


def mixed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [b, Hq, n, d]; key/value [b, Hkv, n, d] (a whole sequence, no cache)."""
    mix: Mix | None = kwargs.get("kvbench_mix")
    if mix is None:
        raise RuntimeError("the 'kvbench_mixed' attention needs kvbench_mix=Mix(...) in the model call")
    if query.shape[2] != key.shape[2]:  # keys from a cache: the causal masks below assume one whole sequence
        raise RuntimeError("mixed attention trains on whole sequences; it does not run with a KV cache")
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    gates = mix.gates[module.layer_idx]
    gqa = query.shape[1] != key.shape[1]
    full = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=gqa)
    if bool((gates == 1).all()):  # nothing to mix (e.g. the full-attention teacher): skip the streaming pass
        return full.transpose(1, 2).contiguous(), None
    streaming = streaming_attention(query, key, value, scaling, mix.sink, mix.window, mix.block)
    z = gates.to(query.dtype).repeat_interleave(query.shape[1] // key.shape[1]).view(1, -1, 1, 1)
    return (z * full + (1 - z) * streaming).transpose(1, 2).contiguous(), None


def streaming_attention(query, key, value, scaling: float, sink: int, window: int, block: int = 1024):
    """Attention over sinks + local window for every query, block by block. Shapes as mixed_attention's."""
    n = query.shape[2]
    gqa = query.shape[1] != key.shape[1]
    blocks = []
    for start in range(0, n, block):
        end = min(start + block, n)
        local_start = max(0, start - window)
        sink_end = min(sink, local_start)  # sinks that fall inside the local span are not listed twice
        index = torch.cat([torch.arange(sink_end), torch.arange(local_start, end)]).to(query.device)
        q_pos = torch.arange(start, end, device=query.device)[:, None]
        k_pos = index[None, :]
        visible = (k_pos <= q_pos) & ((k_pos < sink) | (q_pos - k_pos <= window))
        blocks.append(
            F.scaled_dot_product_attention(
                query[:, :, start:end],
                key[:, :, index],
                value[:, :, index],
                attn_mask=visible,
                scale=scaling,
                enable_gqa=gqa,
            )
        )
    return torch.cat(blocks, dim=2)


AttentionInterface.register(MIXED_ATTENTION, mixed_attention)
AttentionMaskInterface.register(MIXED_ATTENTION, no_mask)  # unpadded or right-padded: causality suffices


def mixing(model, sink: int, window: int):
    """Route the model's attention through mixed attention while training a head pattern."""
    require_attention_interface(model, "its heads cannot be mixed between full and streaming attention")
    check_sink_and_window(sink, window)
    return attention_implementation(model, MIXED_ATTENTION)
