"""The one attention code path (kvbench.attention): a step's queries over the held past and its own entries, by fused
kernels merged by their log-sum-exps, on the CPU kernel and on the CUDA branch run through a CPU stand-in with
`aten._flash_attention_forward`'s signature; sliding windows by blocks of positions; no tensor of size chunk x held;
and the kernel a model gets, or the one-line reason it gets none."""

from __future__ import annotations

import pytest
import torch
from conftest import random_prompt, tiny_model
from greedy import assert_same_greedy

from kvbench import attention, generate
from kvbench.method import ModelShape
from kvbench.methods.duoattention import DuoAttention
from kvbench.methods.full import Full
from kvbench.methods.streamingllm import StreamingLLM

PROMPT_LEN, NEW_TOKENS = 150, 4
FLASH_CALLS: list[tuple] = []  # (query, keys) shapes handed to the stand-in, in [batch, sequence, heads, dim]


def cpu_flash_forward(
    query, key, value, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal, return_debug_mask, *, scale=None
):
    """A CPU stand-in with `torch.ops.aten._flash_attention_forward`'s signature and layout: [batch, sequence, heads,
    dim] in and out, the log-sum-exp [batch, heads, sequence], GQA in the kernel."""
    assert query.stride(-1) == key.stride(-1) == value.stride(-1) == 1, "flash needs a contiguous last dimension"
    assert cum_seq_q is None and dropout_p == 0.0 and not return_debug_mask
    assert query.shape[2] % key.shape[2] == 0 and key.shape == value.shape
    FLASH_CALLS.append((tuple(query.shape), tuple(key.shape)))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), 0.0, is_causal, scale=scale
    )
    return out.transpose(1, 2), lse, None, None, None


KERNELS = {
    "cpu": attention.Kernel("cpu", attention.cpu_fused),
    "cuda branch (CPU stand-in)": attention.Kernel("stand-in", attention.flash_forward_kernel(cpu_flash_forward)),
}


@pytest.fixture(params=list(KERNELS))
def kernel(request, monkeypatch):
    """Every generate() in the test runs on this kernel."""
    chosen = KERNELS[request.param]
    monkeypatch.setattr(attention, "select_kernel", lambda *args, **kwargs: chosen)
    return chosen


def reference(query, keys, values, visible, scale):
    """Masked attention over the full sequence, in float64: the definition."""
    heads = query.shape[1] // keys.shape[1]
    k, v = keys.double().repeat_interleave(heads, 1), values.double().repeat_interleave(heads, 1)
    scores = (query.double() @ k.transpose(-1, -2)) * scale
    return (scores.masked_fill(~visible, float("-inf")).softmax(-1) @ v).float()


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("past, new", [(0, 7), (1, 1), (5, 37), (300, 64), (40, 200)])
def test_a_step_over_held_and_own_entries_equals_the_masked_attention(kernel, heads, kv_heads, past, new):
    torch.manual_seed(0)
    query = torch.randn(1, heads, new, 16)
    keys, values = torch.randn(1, kv_heads, past + new, 16), torch.randn(1, kv_heads, past + new, 16)
    visible = torch.ones(new, past + new, dtype=torch.bool).tril(diagonal=past)
    got = attention.attend(query, keys, values, 0.25, kernel)
    torch.testing.assert_close(got, reference(query, keys, values, visible, 0.25), atol=1e-5, rtol=1e-5)


def test_the_cuda_branch_hands_the_kernel_views_in_its_layout_never_a_chunk_x_held_tensor():
    FLASH_CALLS.clear()
    query, keys = torch.randn(1, 8, 64, 16), torch.randn(1, 2, 364, 16)
    attention.attend(query, keys, keys.clone(), 0.25, KERNELS["cuda branch (CPU stand-in)"])
    # The held past unmasked, then the step's own entries causally: GQA as 8 query heads over 2 KV heads.
    assert FLASH_CALLS == [((1, 64, 8, 16), (1, 300, 2, 16)), ((1, 64, 8, 16), (1, 64, 2, 16))]


def windowed_case(seed, heads, kv_heads, held, new, window, evict):
    """Queries at the positions after `held` tokens; each head holds its own positions (a random `evict` share
    evicted per head, sinks and recent kept), the step's own entries last."""
    torch.manual_seed(seed)
    positions = []
    for _ in range(kv_heads):
        kept = torch.rand(held) >= evict
        kept[:2] = kept[-8:] = True
        positions.append(torch.arange(held)[kept])
    count = min(len(p) for p in positions)
    past = torch.stack([p[torch.linspace(0, len(p) - 1, count).round().long()] for p in positions])
    own = torch.arange(held, held + new)
    key_positions = torch.cat([past, own.expand(kv_heads, -1)], dim=1)
    query = torch.randn(1, heads, new, 16)
    keys, values = (
        torch.randn(1, kv_heads, key_positions.shape[1], 16),
        torch.randn(1, kv_heads, key_positions.shape[1], 16),
    )
    q = own[:, None]
    visible = (key_positions[:, None, :] <= q) & (key_positions[:, None, :] > q - window)  # [kv heads, new, keys]
    visible = visible.repeat_interleave(heads // kv_heads, 0)[None]
    return query, keys, values, key_positions, [(held, new)], visible


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("new", [1, 7, 64, 300])
@pytest.mark.parametrize("block", [1, 7, 64])
def test_a_sliding_window_across_the_held_boundary_equals_the_masked_attention(kernel, heads, kv_heads, new, block):
    query, keys, values, positions, runs, visible = windowed_case(1, heads, kv_heads, 400, new, 50, evict=0.5)
    got = attention.attend_windowed(query, keys, values, positions, runs, 50, 0.25, kernel, block=block)
    torch.testing.assert_close(got, reference(query, keys, values, visible, 0.25), atol=1e-5, rtol=1e-5)


def test_the_windowed_path_masks_nothing_larger_than_a_block(monkeypatch):
    sizes = []
    masked = attention.masked_attention

    def recording(query, keys, values, visible, scale):
        sizes.append(tuple(visible.shape))
        return masked(query, keys, values, visible, scale)

    monkeypatch.setattr(attention, "masked_attention", recording)
    query, keys, values, positions, runs, visible = windowed_case(2, 8, 2, 2000, 512, 300, evict=0.0)
    got = attention.attend_windowed(query, keys, values, positions, runs, 300, 0.25, KERNELS["cpu"], block=64)
    torch.testing.assert_close(got, reference(query, keys, values, visible, 0.25), atol=1e-5, rtol=1e-5)
    assert sizes and max(q * k for q, k in sizes) <= 64 * 64  # a 512 x 2,512 mask was never built


def one_chunk_and_chunked(model, method_factory, chunk_size, prompt):
    run = dict(max_new_tokens=NEW_TOKENS, eos_token_id=[], return_logits=True)
    whole = generate(model, prompt, method_factory(), chunk_size=len(prompt), **run)
    chunked = generate(model, prompt, method_factory(), chunk_size=chunk_size, **run)
    return whole, chunked


@pytest.mark.parametrize("family, settings", [("llama", {}), ("qwen2", {}), ("mistral", {"sliding_window": 40})])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_prefill_gives_the_logits_of_one_chunk(kernel, family, settings, chunk_size):
    model = tiny_model(family, head_dim=16, **settings)  # GQA: 4 query heads over 2 KV heads
    whole, chunked = one_chunk_and_chunked(model, Full, chunk_size, random_prompt(PROMPT_LEN, seed=3))
    assert_same_greedy(chunked.token_ids, chunked.logits, whole.token_ids, whole.logits, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_head_groups_attend_chunks_as_one(kernel, chunk_size, tmp_path):
    """DuoAttention stores full and streaming heads apart; with a window longer than the prompt nothing is evicted,
    so two groups attending chunk by chunk must give one chunk's logits."""
    (tmp_path / "gates.tsv").write_text("0.9\t0.1\n0.2\t0.8\n")
    model = tiny_model("llama", head_dim=16)
    method = lambda: DuoAttention(pattern=str(tmp_path / "gates.tsv"), head_sparsity=0.5, sink=4, window=10_000)  # noqa: E731
    assert len(method().head_groups(0, ModelShape.from_config(model.config))) == 2
    whole, chunked = one_chunk_and_chunked(model, method, chunk_size, random_prompt(PROMPT_LEN, seed=4))
    assert_same_greedy(chunked.token_ids, chunked.logits, whole.token_ids, whole.logits, atol=2e-5, rtol=1e-5)


def test_both_kernels_evict_alike_under_a_sliding_window(monkeypatch):
    """A Mistral window (40) over what StreamingLLM keeps (sink 4, window 30), chunks of 16: the CUDA branch's
    layout gives the CPU kernel's logits and footprint."""
    model = tiny_model("mistral", head_dim=16, sliding_window=40)
    runs = {}
    for name, chosen in KERNELS.items():
        monkeypatch.setattr(attention, "select_kernel", lambda *args, chosen=chosen, **kwargs: chosen)
        runs[name] = generate(
            model,
            random_prompt(PROMPT_LEN, seed=5),
            StreamingLLM(sink=4, window=30),
            chunk_size=16,
            max_new_tokens=NEW_TOKENS,
            eos_token_id=[],
            return_logits=True,
        )
    cpu, cuda = runs.values()
    assert_same_greedy(cuda.token_ids, cuda.logits, cpu.token_ids, cpu.logits, atol=1e-5, rtol=1e-5)
    assert cuda.stats == cpu.stats


# ---- which kernel runs, or why none can ----


def test_a_cpu_model_runs_the_cpu_kernel_and_attn_flash_is_refused_there():
    assert attention.select_kernel(torch.device("cpu"), torch.float32, 64).attend is attention.cpu_fused
    with pytest.raises(ValueError, match="attn=flash runs the flash-attn package on CUDA.*use attn=sdpa"):
        attention.select_kernel(torch.device("cpu"), torch.float32, 64, "flash")


@pytest.mark.parametrize(
    "dtype, head_dim, message",
    [
        (torch.float32, 128, "the model is float32 .*pass dtype=bfloat16"),
        (torch.bfloat16, 512, "its head_dim is 512 \\(flash takes at most 256\\)"),
    ],
)
def test_on_cuda_only_flash_kernels_run_and_anything_else_is_refused_in_one_line(dtype, head_dim, message):
    with pytest.raises(ValueError, match="kvbench attends on CUDA with flash kernels only.*" + message) as error:
        attention.select_kernel(torch.device("cuda"), dtype, head_dim)
    assert "\n" not in str(error.value)
    kernel = attention.select_kernel(torch.device("cuda"), torch.bfloat16, 128)
    assert kernel.name == "torch-flash (aten._flash_attention_forward)"


def test_attn_flash_without_the_package_is_refused(monkeypatch):
    monkeypatch.setattr(attention, "flash_attn_func", None)
    with pytest.raises(ValueError, match=r"attn=flash needs the flash-attn package \(pip install 'kvbench\[gpu\]'\)"):
        attention.select_kernel(torch.device("cuda"), torch.bfloat16, 128, "flash")
