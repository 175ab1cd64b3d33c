"""The attention function registered with transformers as "kvbench", and the one code path it runs on every device.

The model calls the function per layer; it hands the layer to the request's current `Step` (kvbench/step.py),
which appends the step's keys and values to the cache, attends with `attend` below, and lets the method evict.

`attend`: a step's queries over the entries held before it (every one visible, no mask) and over the step's own
entries (causal: a square problem), each in one call of a fused kernel that also returns each query's log-sum-exp,
the two merged exactly by those log-sum-exps. Nothing of size step x held is ever built, GQA runs in the kernel (no
copy of K/V per query head), and the same code runs on CPU and CUDA: only the kernel differs (`select_kernel`),
and each kernel is a thin call behind one signature

    kernel(query [1, Hq, c, d], keys [1, Hkv, n, d], values, causal, scale) -> (out [1, Hq, c, d], lse [1, Hq, c])

- CPU: PyTorch's fused attention for CPU (`aten._scaled_dot_product_flash_attention_for_cpu`);
- CUDA: PyTorch's own flash kernel (`aten._flash_attention_forward`, the flash-attn 2 algorithm vendored in
  PyTorch, no extra package), or the flash-attn package with `attn=flash`. Both need bf16/fp16 and head_dim <= 256;
  anything else is refused when the request starts, in one line, never run on another kernel silently. The
  CUDA kernels are wrapped by `flash_forward_kernel`, which the tests run on CPU through a stand-in with
  `_flash_attention_forward`'s signature, so the CUDA branch's layout, GQA and merge are tested without a GPU.

Sliding-window models (Mistral): where the window may cut into what is held (the step's last position >= the
window), `attend_windowed` goes by blocks of queries and, per KV head, by the held positions: the keys every query
of a block sees go to the kernel unmasked, the two bands at the window's edge and at the diagonal (each at most a
block wide) to a small masked computation; no mask larger than block x block is built.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

ATTENTION_NAME = "kvbench"
ATTENTION_KERNELS = ("sdpa", "flash")
QUERY_BLOCK = 1024  # queries per block where a sliding window cuts into the held entries

try:  # the `gpu` extra
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = None

# ---- kernels ----


@dataclass(frozen=True)
class Kernel:
    """A fused attention that returns each query's log-sum-exp; `name` is what the results file records."""

    name: str
    attend: Callable


def cpu_fused(query, keys, values, causal: bool, scale: float):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, keys, values, 0.0, causal, scale=scale)
    return out, lse


def flash_forward_kernel(forward) -> Callable:
    """The kernel of a function with `torch.ops.aten._flash_attention_forward`'s signature: [batch, sequence, heads,
    dim] layout (the transposes below are views: the last dimension stays contiguous, as flash needs), GQA in the
    kernel, the log-sum-exp [batch, heads, sequence] returned. On a square problem, as kvbench only makes causal
    ones, flash-attn's bottom-right causal alignment is plain causality."""

    def attend(query, keys, values, causal: bool, scale: float):
        out, lse = forward(
            query.transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            None,
            None,
            query.shape[2],
            keys.shape[2],
            0.0,
            causal,
            False,
            scale=scale,
        )[:2]
        return out.transpose(1, 2), lse

    return attend


def flash_attn_package(query, keys, values, causal: bool, scale: float):
    out, lse, _ = flash_attn_func(
        query.transpose(1, 2),
        keys.transpose(1, 2),
        values.transpose(1, 2),
        causal=causal,
        softmax_scale=scale,
        return_attn_probs=True,
    )
    return out.transpose(1, 2), lse


FLASH_DTYPES = (torch.bfloat16, torch.float16)
FLASH_MAX_HEAD_DIM = 256


def select_kernel(device: torch.device, dtype: torch.dtype, head_dim: int, attn: str = "sdpa") -> Kernel:
    """The kernel a model on `device` in `dtype` runs with, or a one-line error saying why none can and what to do."""
    if attn not in ATTENTION_KERNELS:
        raise ValueError(f"attn must be one of {', '.join(ATTENTION_KERNELS)}; got {attn!r}")
    if device.type == "cpu":
        if attn == "flash":
            raise ValueError(
                "attn=flash runs the flash-attn package on CUDA; this model is on the CPU: use attn=sdpa "
                "(PyTorch's fused attention for CPU)"
            )
        return Kernel("cpu-fused (aten._scaled_dot_product_flash_attention_for_cpu)", cpu_fused)
    if device.type != "cuda":
        raise ValueError(f"kvbench's attention runs on CPU or CUDA; this model is on {device.type}")
    problems = []
    if dtype not in FLASH_DTYPES:
        problems.append(
            f"the model is {str(dtype).removeprefix('torch.')} (flash needs bfloat16 or float16: pass dtype=bfloat16)"
        )
    if head_dim > FLASH_MAX_HEAD_DIM:
        problems.append(f"its head_dim is {head_dim} (flash takes at most {FLASH_MAX_HEAD_DIM})")
    if problems:
        raise ValueError(
            "kvbench attends on CUDA with flash kernels only, never through a chunk x held score "
            "matrix; " + " and ".join(problems)
        )
    if attn == "flash":
        if flash_attn_func is None:
            raise ValueError(
                "attn=flash needs the flash-attn package (pip install 'kvbench[gpu]'); attn=sdpa runs "
                "PyTorch's own flash kernel, the same algorithm"
            )
        import flash_attn

        return Kernel(f"flash-attn {flash_attn.__version__} (flash_attn_func)", flash_attn_package)
    return Kernel(
        "torch-flash (aten._flash_attention_forward)", flash_forward_kernel(torch.ops.aten._flash_attention_forward)
    )


# ---- the one code path ----


def attend(query, keys, values, scale: float, kernel: Kernel) -> torch.Tensor:
    """The step's c queries over n held entries, the last c of which are the step's own: the n - c before them all
    visible, the own ones causally. Two kernel calls merged by their log-sum-exps (one where either part is empty)."""
    new, held = query.shape[2], keys.shape[2]
    past = held - new
    if past == 0:  # nothing held before the step: plain causal attention
        return kernel.attend(query, keys, values, True, scale)[0]
    if new == 1:  # a decode step sees every held entry, itself included
        return kernel.attend(query, keys, values, False, scale)[0]
    out_past, lse_past = kernel.attend(query, keys[:, :, :past], values[:, :, :past], False, scale)
    out_own, lse_own = kernel.attend(query, keys[:, :, past:], values[:, :, past:], True, scale)
    past_share = torch.sigmoid(lse_past - lse_own)[..., None]  # the past's part of each query's softmax mass
    return torch.lerp(out_own.float(), out_past.float(), past_share).to(query.dtype)


def merge(parts: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype) -> torch.Tensor:
    """Attention over disjoint sets of keys, merged exactly: each part weighs exp(its lse - the total lse). A part a
    query sees nothing of has lse -inf and weighs 0."""
    lses = torch.stack([lse.float() for _, lse in parts])
    total = torch.logsumexp(lses, dim=0)
    out = sum(torch.exp(lse - total)[..., None] * part.float() for (part, _), lse in zip(parts, lses, strict=True))
    return out.to(dtype)


def masked_attention(query, keys, values, visible: torch.Tensor, scale: float):
    """(out, lse) of queries [1, r, b, d] over a few keys [1, 1, m, d] with visible [b, m]: for the bands of the
    sliding-window path only, where b and m are at most a block (the mask is block x block at most)."""
    scores = torch.einsum("hqd,kd->hqk", query[0].float(), keys[0, 0].float()) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    weights = torch.exp(scores - lse[..., None]).nan_to_num(0.0)  # a query that sees none of these keys: 0
    return torch.einsum("hqk,kd->hqd", weights, values[0, 0].float())[None], lse[None]


def attend_windowed(
    query,
    keys,
    values,
    key_positions,
    query_runs: list[tuple[int, int]],
    window: int,
    scale: float,
    kernel: Kernel,
    block: int = QUERY_BLOCK,
) -> torch.Tensor:
    """`attend` for a model whose keys are visible only within `window` positions (Mistral): key p is visible to
    query q when q - window < p <= q. Queries go in blocks of consecutive positions (`query_runs`: (first position,
    count) of each run of the step's queries, in order), KV heads one by one (after eviction each holds other
    positions): per (block, head) the held entries split, by position, into those no query of the block sees, a band
    at the window's lower edge, those every query sees, and a band up to the diagonal; the third go to the kernel,
    the bands to `masked_attention`, at most block x block each."""
    block = max(1, min(block, window))  # a block shorter than the window: its bands never overlap
    heads, per_head = keys.shape[1], query.shape[1] // keys.shape[1]
    blocks, start = [], 0
    for first, count in query_runs:
        for offset in range(0, count, block):
            size = min(block, count - offset)
            blocks.append((start + offset, size, first + offset))  # (query index, count, first position)
        start += count
    # Where each block's ranges begin and end in each head's held positions (ascending): one transfer per layer,
    # since slicing needs the sizes on the host.
    edges = torch.tensor(
        [[q0 - window, q0 + size - 1 - window, q0, q0 + size - 1] for _, size, q0 in blocks],
        device=key_positions.device,
    )
    cuts = (
        torch.searchsorted(key_positions.contiguous(), edges.flatten()[None].expand(heads, -1).contiguous(), right=True)
        .view(heads, len(blocks), 4)
        .tolist()
    )
    out = torch.empty_like(query)
    for b, (index, size, q0) in enumerate(blocks):
        q_positions = torch.arange(q0, q0 + size, device=query.device)
        for head in range(heads):
            low, middle, high, top = cuts[head][b]
            q = query[:, head * per_head : (head + 1) * per_head, index : index + size]
            k, v = keys[:, head : head + 1], values[:, head : head + 1]
            parts = []
            if middle < high:  # seen by every query of the block
                parts.append(kernel.attend(q, k[:, :, middle:high], v[:, :, middle:high], False, scale))
            for lo, hi, rule in ((low, middle, "window"), (high, top, "causal")):
                if lo < hi:
                    p = key_positions[head, lo:hi]
                    visible = (
                        p[None, :] > q_positions[:, None] - window
                        if rule == "window"
                        else p[None, :] <= q_positions[:, None]
                    )
                    parts.append(masked_attention(q, k[:, :, lo:hi], v[:, :, lo:hi], visible, scale))
            out[:, head * per_head : (head + 1) * per_head, index : index + size] = merge(parts, query.dtype)
    return out


# ---- what transformers calls ----


def kvbench_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [1, Hq, c, d] (post-RoPE); key/value the step's own [1, Hkv, c, d]: the Step appends them, attends and
    evicts."""
    step = kwargs.get("kvbench_step")
    if step is None:
        raise RuntimeError(
            "the 'kvbench' attention runs only inside kvbench.generate(), which passes its Step; "
            "use another attn_implementation to call the model directly"
        )
    _refuse_unknown_arguments(module, dropout, kwargs)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    output = step.layer(module.layer_idx, query, key, value, scaling, kwargs.get("sliding_window"))
    return output.transpose(1, 2).contiguous(), None


# What a model may hand the attention function: what kvbench implements (scaling, sliding_window, and its own
# step), and bookkeeping that does not change attention's result. Anything else changes the math (GPT-OSS's
# learned sinks `s_aux`, Gemma 2's `softcap`, ...): run without it, the logits would silently differ from the
# model's own, so it is refused.
IMPLEMENTED_ARGUMENTS = {"kvbench_step", "sliding_window"}
BOOKKEEPING_ARGUMENTS = {
    "position_ids",
    "cache_position",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "output_router_logits",
    "return_dict",
}


def _refuse_unknown_arguments(module, dropout, kwargs) -> None:
    unknown = sorted(
        name
        for name, value in kwargs.items()
        if value is not None and name not in IMPLEMENTED_ARGUMENTS | BOOKKEEPING_ARGUMENTS
    )
    if dropout:
        unknown.insert(0, f"dropout={dropout}")
    if unknown:
        config = getattr(module, "config", None)
        model = getattr(config, "model_type", None) or type(module).__name__
        raise ValueError(
            f"model type {model!r} passes attention argument(s) {', '.join(unknown)} that kvbench's attention does "
            "not implement, so its logits would differ from the model's own; kvbench cannot evaluate this model"
        )


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
