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
    return "-".join(f"{k}{case[k]}" for k in ("prompt_len", "decode_steps", "chunk_size", "sink", "window") if k in case)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["kind"] + "-" + case_id(c))
def test_analytic_formula_matches_the_papers_values(case):
    extra = {k: case[k] for k in ("sink", "window", "keep", "always_keep_window", "streaming_head_share") if k in case}
    footprint, peak = analytic_footprint(case["prompt_len"], case["decode_steps"], case["chunk_size"], case["kind"], **extra)
    assert footprint == pytest.approx(case["footprint"], abs=1e-6)
    assert peak == pytest.approx(case["peak"], abs=1e-6)


@pytest.mark.parametrize("case", STREAMING_CASES, ids=case_id)
def test_streamingllm_measured_footprint_equals_the_papers_formula(small_model, case):
    method = StreamingLLM(sink=case["sink"], window=case["window"])
    # The last generated token is never fed back: decode steps = new tokens - 1.
    result = generate(
        small_model, random_prompt(case["prompt_len"]), method,
        chunk_size=case["chunk_size"], max_new_tokens=case["decode_steps"] + 1, eos_token_id=[],
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
    footprint, peak = analytic_footprint(
        prompt_len, decode_steps, chunk_size, "streaming", sink=sink, window=window
    )
    assert streaming.kv_footprint == pytest.approx(footprint, abs=1e-9)
    assert streaming.kv_peak == pytest.approx(peak, abs=1e-9)
    assert streaming.kv_peak_bytes <= full.kv_peak_bytes


def test_footprint_calculator_command():
    out = subprocess.run(
        [sys.executable, "-m", "kvbench", "footprint", "--prompt-len", "1000", "--decode-steps", "20",
         "--chunk-size", "256", "--kind", "streaming", "--sink", "4", "--window", "64"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "0.341242" in out and "0.317647" in out


def test_analytic_formula_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown kind 'sliding'; known: full, streaming"):
        analytic_footprint(10, 0, 4, "sliding")
    with pytest.raises(ValueError, match="prompt_len and chunk_size must be >= 1"):
        analytic_footprint(10, 0, 0)
