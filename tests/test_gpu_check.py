"""benchmarks/gpu_check.sh runs end to end on CPU with its tiny config, and its figures hang together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CASES = {"hf", "full_one_chunk", "full", "snapkv_postfill", "snapkv_chunked", "duoattention"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "check.json"
    env = dict(os.environ, KVBENCH_GPU_CHECK_TINY="1", PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--decode", "4", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "prefill tok/s" in done.stdout  # the table was printed
    return json.loads(out.read_text())


def rows(report, length):
    return {r["case"]: r for r in report["rows"] if r["tokens"] == length}


def test_every_case_ran_at_every_length(report):
    assert report["tiny"] is True
    lengths = sorted({r["tokens"] for r in report["rows"]})
    assert lengths == [256, 512]
    for length in lengths:
        got = rows(report, length)
        assert set(got) == CASES
        for row in got.values():
            assert "skipped" not in row
            assert row["prefill_tok_s"] > 0 and row["decode_tok_s"] > 0


# bf16 logits of about 0.5 lie 2e-3 apart; two kernels (with or without AVX-512 bf16, a GPU) may differ by a few of
# those steps, so a greedy choice whose top-1/top-2 margin is below this can go either way.
BF16_TIE = 0.02


def plain_model_margins(length: int, tokens: list[int]) -> tuple[list[float], list[int]]:
    """The script's tiny bf16 model and prompt, rebuilt here: top-1 minus top-2 of the plain model's logits and its
    argmax at each of the first len(tokens) greedy steps, fed `tokens` (teacher forcing)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    model = gpu_check.build_model(True, "sdpa", torch.device("cpu"))
    ids = torch.randint(0, model.config.vocab_size, (length,), generator=torch.Generator().manual_seed(length))
    with torch.inference_mode():
        logits = model(torch.cat([ids, torch.tensor(tokens[:-1], dtype=ids.dtype)])[None]).logits[0, length - 1:]
    top = logits.float().topk(2, dim=-1)
    return (top.values[:, 0] - top.values[:, 1]).tolist(), top.indices[:, 0].tolist()


def test_full_attention_is_the_plain_model(report):
    for length in (256, 512):
        got = rows(report, length)
        # Same greedy tokens as transformers (random bf16 weights: the first ones at least), as far as the plain
        # model's choices are decisive: at a bf16 near-tie kvbench and transformers may rightly part.
        want = got["hf"]["first_tokens"][:2]
        margins, argmax = plain_model_margins(length, want)
        decisive = next((step for step, margin in enumerate(margins) if margin <= BF16_TIE), len(margins))
        assert decisive >= 1, f"the first greedy step at {length} tokens nearly ties ({margins[0]:.4f}): pick a seed"
        assert argmax[:decisive] == want[:decisive], "the model rebuilt here is not the script's"
        assert got["full_one_chunk"]["first_tokens"][:decisive] == want[:decisive]
        assert got["full"]["prefill_vs_hf"] > 0
        # full attention holds exactly what the plain model's DynamicCache holds.
        assert got["full_one_chunk"]["kv_bytes_after_prompt"] == got["hf"]["kv_bytes_after_prompt"]
        assert got["full"]["kv_footprint"] == pytest.approx(1.0)


def test_eviction_shows_in_the_ledger(report):
    config = report["config"]
    for length in (256, 512):
        got = rows(report, length)
        entry = 2 * config["head_dim"] * 2  # K and V, bf16
        full_kv = config["num_hidden_layers"] * config["num_key_value_heads"] * length * entry
        assert got["full"]["kv_bytes_after_prompt"] == full_kv
        # decode steps append to the full cache: the peak is the prompt's plus the fed decode tokens
        assert got["full"]["kv_peak_bytes"] == full_kv * (length + 4) // length
        # post-fill holds every layer's whole prompt before it evicts that layer (layers in order), so its
        # peak stays below full attention's; chunked eviction's is lower still once the prompt spans
        # several chunks (4 at 512 tokens; with 2 tiny chunks of 128, the 64 recent entries kept per chunk
        # make chunked keep 80% of each, and its peak exceeds post-fill's)
        assert got["snapkv_postfill"]["kv_peak_bytes"] < full_kv
        if length // report["chunk_size"] >= 4:
            assert got["snapkv_chunked"]["kv_peak_bytes"] < got["snapkv_postfill"]["kv_peak_bytes"]
        # keep 0.3 counts the share of the prompt (post-fill) or of each chunk (chunked), plus 64 recent
        heads = config["num_hidden_layers"] * config["num_key_value_heads"]
        chunk = report["chunk_size"]
        postfill = round(0.3 * length) + 64
        chunked = sum(min(round(0.3 * c) + 64, c) for c in [chunk] * (length // chunk))
        assert got["snapkv_postfill"]["kv_bytes_after_prompt"] == heads * postfill * entry
        assert got["snapkv_chunked"]["kv_bytes_after_prompt"] == heads * chunked * entry
        # 70% of the (layer, KV head) pairs stream: they hold sink + window entries, the rest the whole prompt
        streaming = round(report["streaming_share"] * heads)
        sink, window = report["duo_sink_window"]
        duo = (streaming * (sink + window) + (heads - streaming) * length) * entry
        assert got["duoattention"]["kv_bytes_after_prompt"] == duo


def test_cpu_has_no_gpu_memory_figures(report):
    assert all(r["peak_allocated"] is None and r["measured_vs_expected"] is None for r in report["rows"])


def test_the_multi_gpu_cases_say_why_they_were_skipped(report):
    assert report["multi_gpu"] == {"skipped": "the multi-GPU checks need 2 visible GPUs; 0 visible"}
