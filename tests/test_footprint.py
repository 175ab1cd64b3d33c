"""The measured KV footprint: the paper's formula, physical bytes, and properties over random settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_prompt, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvbench import generate
from kvbench.cache import KVCache
from kvbench.engine import forward_step, kvbench_attention
from kvbench.ledger import analytic_footprint
from kvbench.method import ModelShape, Phase
from kvbench.methods.full import Full
from kvbench.methods.streamingllm import StreamingLLM

CASES = json.loads((Path(__file__).parent / "data" / "paper_formula_cases.json").read_text())["cases"]
STREAMING_CASES = [case for case in CASES if case["kind"] == "streaming"]


@pytest.fixture(scope="module")
def small_model():
    return tiny_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2)


def case_id(case):
    return "-".join(
        f"{k}{case[k]}" for k in ("prompt_len", "decode_steps", "chunk_size", "sink", "window") if k in case
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["kind"] + "-" + case_id(c))
def test_analytic_formula_matches_the_papers_values(case):
    extra = {k: case[k] for k in ("sink", "window", "keep", "always_keep_window", "streaming_head_share") if k in case}
    footprint, peak = analytic_footprint(
        case["prompt_len"], case["decode_steps"], case["chunk_size"], case["kind"], **extra
    )
    assert footprint == pytest.approx(case["footprint"], abs=1e-6)
    assert peak == pytest.approx(case["peak"], abs=1e-6)


@pytest.mark.parametrize("case", STREAMING_CASES, ids=case_id)
def test_streamingllm_measured_footprint_equals_the_papers_formula(small_model, case):
    method = StreamingLLM(sink=case["sink"], window=case["window"])
    # The last generated token is never fed back: decode steps = new tokens - 1.
    result = generate(
        small_model,
        random_prompt(case["prompt_len"]),
        method,
        chunk_size=case["chunk_size"],
        max_new_tokens=case["decode_steps"] + 1,
        eos_token_id=[],
    )
    assert result.decode_steps == case["decode_steps"]
    assert result.stats.kv_footprint == pytest.approx(case["footprint"], abs=1e-6)
    assert result.stats.kv_peak == pytest.approx(case["peak"], abs=1e-6)


def bytes_per_entry(model) -> int:
    shape = ModelShape.from_config(model.config)
    return 2 * shape.head_dim * model.dtype.itemsize  # one key and one value


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_physical_bytes_after_eviction_equal_held_entries(dtype):
    model = tiny_model("llama").to(dtype)
    shape = ModelShape.from_config(model.config)
    method = StreamingLLM(sink=3, window=10)
    cache = KVCache(shape, method)
    prompt = random_prompt(50)
    with kvbench_attention(model), torch.inference_mode():
        forward_step(model, cache, prompt, 0, Phase(False, 0, 1))
    held_per_head = 3 + 10
    assert cache.num_held == shape.num_layers * shape.num_kv_heads * held_per_head
    for layer in cache.layers:
        for group in layer.groups:
            assert group.keys.shape[2] == held_per_head  # the tensor itself shrank: nothing masked
    assert cache.nbytes == cache.num_held * bytes_per_entry(model)
    # The ledger's running count of bytes follows the tensors through appends and evictions.
    assert cache.ledger.bytes_now == cache.nbytes


def test_peak_bytes_are_measured_layer_by_layer(small_model):
    # Layers are visited in order: the peak is one layer with the whole chunk plus the others' windows.
    shape = ModelShape.from_config(small_model.config)
    result = generate(small_model, random_prompt(200), StreamingLLM(sink=0, window=20), max_new_tokens=1)
    per_entry = bytes_per_entry(small_model)
    heads = shape.num_kv_heads
    expected_entries = heads * 200 + (shape.num_layers - 1) * heads * 20
    assert result.stats.kv_entries == expected_entries
    assert result.stats.kv_peak_bytes == expected_entries * per_entry


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt_len=st.integers(1, 160),
    decode_steps=st.integers(0, 6),
    chunk_size=st.integers(1, 200),
    sink=st.integers(0, 12),
    window=st.integers(1, 40),
)
def test_footprint_properties(small_model, prompt_len, decode_steps, chunk_size, sink, window):
    prompt = random_prompt(prompt_len, seed=prompt_len)
    run = dict(chunk_size=chunk_size, max_new_tokens=decode_steps + 1, eos_token_id=[])
    full = generate(small_model, prompt, Full(), **run).stats
    assert full.kv_footprint == 1.0
    assert full.kv_peak == 1.0

    streaming = generate(small_model, prompt, StreamingLLM(sink=sink, window=window), **run).stats
    assert 0 < streaming.kv_footprint <= 1
    assert 0 < streaming.kv_peak <= 1
    footprint, peak = analytic_footprint(prompt_len, decode_steps, chunk_size, "streaming", sink=sink, window=window)
    assert streaming.kv_footprint == pytest.approx(footprint, abs=1e-9)
    assert streaming.kv_peak == pytest.approx(peak, abs=1e-9)
    assert streaming.kv_peak_bytes <= full.kv_peak_bytes


@pytest.mark.slow
def test_footprint_calculator_command():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvbench",
            "footprint",
            "--prompt-len",
            "1000",
            "--decode-steps",
            "20",
            "--chunk-size",
            "256",
            "--kind",
            "streaming",
            "--sink",
            "4",
            "--window",
            "64",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "0.341242" in out and "0.317647" in out


def test_analytic_formula_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown kind 'sliding'; known: full, streaming"):
        analytic_footprint(10, 0, 4, "sliding")
    with pytest.raises(ValueError, match="prompt_len and chunk_size must be >= 1"):
        analytic_footprint(10, 0, 0)


# ---- the allocator's peak, per request and device ----


class FakeAllocator:
    """A stand-in for torch.cuda's memory statistics on one fake GPU, which sees the request's cache after each step:
    `reset` starts a request's high-water mark, `peak` reads it."""

    def __init__(self):
        self.high, self.resets = 0, 0

    def reset(self, gpus):
        assert gpus == ["fake:0"]
        self.high, self.resets = 0, self.resets + 1

    def peak(self, gpus):
        return {"fake:0": self.high}

    def observe(self, nbytes):
        self.high = max(self.high, nbytes)


def test_the_allocator_peak_is_reset_per_request_and_recorded_per_device(monkeypatch, small_model):
    from kvbench import devices, step
    from kvbench.lmeval.tally import FootprintTally

    fake = FakeAllocator()
    monkeypatch.setattr(devices, "MEMORY", fake)
    monkeypatch.setattr(devices, "model_gpus", lambda model: ["fake:0"])
    finish = step.Step.finish

    def seen(self):
        fake.observe(self.cache.nbytes)
        return finish(self)

    monkeypatch.setattr(step.Step, "finish", seen)
    long = generate(small_model, random_prompt(400), max_new_tokens=2, eos_token_id=[])
    short = generate(small_model, random_prompt(40), max_new_tokens=2, eos_token_id=[])
    assert fake.resets == 2
    # Each request's own peak: the cache it held (a process-lifetime maximum would give the short one the long's).
    assert long.device_peak_bytes == {"fake:0": long.stats.kv_peak_bytes}
    assert (
        short.device_peak_bytes == {"fake:0": short.stats.kv_peak_bytes}
        and short.stats.kv_peak_bytes < long.stats.kv_peak_bytes / 5
    )
    tally = FootprintTally()
    for generation in (long, short):
        tally.add("task", generation.stats, doc_id=0, device_peak_bytes=generation.device_peak_bytes)
    summary = tally.summary()
    assert summary["tasks"]["task"]["gpu_peak_allocated_bytes"] == {"fake:0": long.stats.kv_peak_bytes}
    assert summary["gpu_peak_allocated_bytes_total"] == long.stats.kv_peak_bytes


def test_the_transient_peak_counts_the_double_buffer_of_an_append_and_the_copy_of_an_eviction(small_model):
    """Full attention, 200 tokens in chunks of 64 on a 2-layer model: the last chunk's append in layer 1 makes the
    200-entry tensors while layer 1's 192 old ones are still alive, beside layer 0's 200: 592 entries' bytes at once,
    against the 400 held (kv_peak_bytes). An eviction gathers its kept copy beside what it evicts from."""
    per_entry = bytes_per_entry(small_model) * small_model.config.num_key_value_heads  # one layer, every KV head
    full = generate(small_model, random_prompt(200), max_new_tokens=1, chunk_size=64)
    assert full.stats.kv_peak_bytes == 400 * per_entry
    assert full.stats.kv_transient_peak_bytes == (200 + 192 + 200) * per_entry
    evicting = generate(
        small_model, random_prompt(200), StreamingLLM(sink=0, window=20), max_new_tokens=1, chunk_size=64
    )
    assert evicting.stats.kv_transient_peak_bytes > evicting.stats.kv_peak_bytes
