"""The attention function registered with transformers as "kvbench".

The model calls it per layer after `KVCache.update` has appended the step's keys to each head group.
For each group, the step's queries attend over the group's held entries, the step's own entries
causally (bottom-right aligned: every query sees all held past entries). Then the cache asks the
method what to keep. GQA runs on the KV heads as stored: no copy per query head.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

ATTENTION_NAME = "kvbench"
ATTENTION_KERNELS = ("sdpa", "flash")

try:  # the `gpu` extra
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = None

# PyTorch's fused CPU attention, which also returns each query's log-sum-exp (what merging two parts needs);
# present since torch 2.2. Without it, chunks are attended in query blocks (_in_query_blocks).
_flash_cpu = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def kvbench_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [1, Hq, c, d] (post-RoPE); key/value are the step's own, already appended to the cache."""
    cache = kwargs.get("kvbench_cache")
    if cache is None:
        raise RuntimeError(
            "the 'kvbench' attention runs only inside kvbench.generate(), which passes its KVCache; "
            "use another attn_implementation to call the model directly"
        )
    _refuse_unknown_arguments(module, dropout, kwargs)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    layer = cache.layers[module.layer_idx]
    sliding_window = kwargs.get("sliding_window")
    if len(layer.groups) == 1:
        group = layer.groups[0]
        output = _attend(query, group, scaling, sliding_window, cache)
    else:
        output = torch.empty_like(query)
        for group in layer.groups:
            heads = torch.tensor(group.query_heads, device=query.device)
            output[:, heads] = _attend(query[:, heads], group, scaling, sliding_window, cache)
    cache.evict(module.layer_idx, query, scaling)
    return output.transpose(1, 2).contiguous(), None


# What a model may hand the attention function: what kvbench implements (scaling, sliding_window, and its own
# cache), and bookkeeping that does not change attention's result. Anything else changes the math (GPT-OSS's
# learned sinks `s_aux`, Gemma 2's `softcap`, ...): run without it, the logits would silently differ from the
# model's own, so it is refused.
IMPLEMENTED_ARGUMENTS = {"kvbench_cache", "sliding_window"}
BOOKKEEPING_ARGUMENTS = {"position_ids", "cache_position", "use_cache", "output_attentions", "output_hidden_states",
                         "output_router_logits", "return_dict"}


def _refuse_unknown_arguments(module, dropout, kwargs) -> None:
    unknown = sorted(name for name, value in kwargs.items()
                     if value is not None and name not in IMPLEMENTED_ARGUMENTS | BOOKKEEPING_ARGUMENTS)
    if dropout:
        unknown.insert(0, f"dropout={dropout}")
    if unknown:
        config = getattr(module, "config", None)
        model = getattr(config, "model_type", None) or type(module).__name__
        raise ValueError(
            f"model type {model!r} passes attention argument(s) {', '.join(unknown)} that kvbench's attention does "
            "not implement, so its logits would differ from the model's own; kvbench cannot evaluate this model"
        )


def _attend(query, group, scaling, sliding_window, cache):
    keys, values = group.keys, group.values
    new, held = query.shape[2], keys.shape[2]
    window_mask = _sliding_window_mask(group.positions, cache.positions.to(query.device), sliding_window,
                                       query.shape[1])
    if window_mask is None and cache.attn_kernel == "flash" and query.is_cuda and flash_attn_func is not None:
        # flash-attn's causal mask is bottom-right aligned when keys outnumber queries: what chunks need.
        out = flash_attn_func(
            query.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), causal=True, softmax_scale=scaling
        )
        return out.transpose(1, 2)
    gqa = query.shape[1] != keys.shape[1]
    if window_mask is not None:  # a sliding-window model whose window cuts into the held entries
        mask = window_mask & _causal_mask(new, held, query.device)
        return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scaling, enable_gqa=gqa)
    if new == 1 or new == held:  # a decode step sees every held entry; with nothing held, plain causal
        return F.scaled_dot_product_attention(query, keys, values, is_causal=new > 1, scale=scaling, enable_gqa=gqa)
    if query.device.type == "cpu" and _flash_cpu is not None:
        return _past_then_own(query, keys, values, held - new, scaling)
    return _in_query_blocks(query, keys, values, held - new, scaling, gqa)


def _past_then_own(query, keys, values, past: int, scaling: float) -> torch.Tensor:
    """A chunk's queries over the held past (all visible: no mask) and over the chunk's own entries (causal, a
    square problem), in fused kernels, merged exactly by each part's log-sum-exp: nothing of size chunk x held is
    built, so chunked prefill costs what one chunk does. GQA runs in the kernel, without copies."""
    out_past, lse_past = _flash_cpu(query, keys[:, :, :past], values[:, :, :past], 0.0, False, scale=scaling)
    out_own, lse_own = _flash_cpu(query, keys[:, :, past:], values[:, :, past:], 0.0, True, scale=scaling)
    past_share = torch.sigmoid(lse_past - lse_own)[..., None]  # the past's part of each query's softmax mass
    return torch.lerp(out_own.float(), out_past.float(), past_share).to(query.dtype)


QUERY_BLOCK = 1024


def _in_query_blocks(query, keys, values, past: int, scaling: float, gqa: bool) -> torch.Tensor:
    """Where no kernel returns the log-sum-exp (CUDA without flash-attn): the chunk's queries in blocks, each with
    its bottom-right causal mask over the keys it may see, so no mask grows past block x held."""
    outputs = []
    for start in range(0, query.shape[2], QUERY_BLOCK):
        block = query[:, :, start : start + QUERY_BLOCK]
        seen = past + start + block.shape[2]
        mask = _causal_mask(block.shape[2], seen, query.device)
        outputs.append(F.scaled_dot_product_attention(block, keys[:, :, :seen], values[:, :, :seen], attn_mask=mask,
                                                      scale=scaling, enable_gqa=gqa))
    return torch.cat(outputs, dim=2)


def _causal_mask(new: int, held: int, device) -> torch.Tensor:
    """[new, held] bool: all earlier held entries, and the step's own entries up to each query."""
    return torch.ones(new, held, dtype=torch.bool, device=device).tril(diagonal=held - new)


def _sliding_window_mask(key_positions, query_positions, window, query_heads):
    """For models with a sliding window (Mistral): [Hq, new, held] bool, or None when nothing falls outside."""
    if window is None or int(query_positions[-1] - key_positions.min()) < window:
        return None
    allowed = key_positions[:, None, :] > query_positions[None, :, None] - window  # [h, new, held]
    return allowed.repeat_interleave(query_heads // key_positions.shape[0], dim=0)


def require_attention_interface(model, consequence: str) -> None:
    """Refuse a model whose attention cannot be swapped through transformers' AttentionInterface."""
    if not (getattr(model, "_supports_attention_backend", False) and model._can_set_attn_implementation()):
        raise ValueError(
            f"{type(model).__name__} does not route attention through transformers' AttentionInterface, so "
            f"{consequence}; use a model family that does (Llama, Qwen2/Qwen3, Mistral, ...)"
        )


@contextmanager
def attention_implementation(model, name: str):
    """Run the model with the registered attention function `name`, restoring its own afterwards."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def no_mask(*args, **kwargs):
    """kvbench builds its own masks from what the cache holds; transformers must not build one."""
    return None


def register() -> None:
    AttentionInterface.register(ATTENTION_NAME, kvbench_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, no_mask)


register()
