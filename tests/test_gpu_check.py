"""benchmarks/gpu_check.sh on CPU with its tiny sizes and a planted failing case: every other case still runs and
writes its line, the script exits non-zero naming the failed case, it ran this checkout's kvbench, and the figures
hang together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KVBENCH_CASES = ("full", "snapkv_patched", "duoattention", "streamingllm")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "check.jsonl"
    env = dict(
        os.environ,
        KVBENCH_GPU_CHECK_TINY="1",
        PYTHON=sys.executable,
        CUDA_VISIBLE_DEVICES="",
        KVBENCH_GPU_SITE=str(out.parent / "site"),
    )
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--json", str(out), "--plant-failure"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return done, lines


def rows(lines, case):
    return [line for line in lines if line["case"] == case]


def test_a_failing_case_costs_only_itself_and_the_script_says_so(check):
    done, lines = check
    assert done.returncode == 1
    assert "gpu check: 1 case(s) failed: planted_failure" in done.stderr
    [planted] = rows(lines, "planted_failure")
    assert planted["status"] == "failed" and planted["error"].startswith("ZeroDivisionError")
    # every other case ran after it, each line written as the case ended
    assert [line["case"] for line in lines][-1] == "summary" and lines[-1]["failed"] == ["planted_failure"]
    others = [line for line in lines if line["case"] not in ("planted_failure", "summary")]
    assert others and all(line["status"] == "ok" for line in others)
    assert {line["case"] for line in others} >= {
        "machine",
        "multi_gpu",
        "logits_vs_hf",
        "hf",
        "sliding_window",
        *KVBENCH_CASES,
    }


def test_it_runs_this_checkout_and_skips_the_multi_gpu_cases_saying_why(check):
    _, lines = check
    [machine] = rows(lines, "machine")
    assert Path(machine["kvbench_path"]) == ROOT / "kvbench" and machine["tiny"] is True
    [multi] = rows(lines, "multi_gpu")
    assert multi["skipped"] == "the multi-GPU checks need 2 visible GPUs; 0 visible"


def test_full_attention_is_the_plain_model_within_a_tolerance_on_log_probabilities(check):
    _, lines = check
    [logits] = rows(lines, "logits_vs_hf")
    assert logits["tokens_scored"] == 16 and logits["max_logprob_difference"] < 0.05
    [sliding] = rows(lines, "sliding_window")  # 300 tokens over a window of 48: the window cuts into what is held
    assert sliding["sliding_window"] == 48 and sliding["max_logprob_difference"] < 0.05


def test_the_ledger_figures_hang_together(check):
    _, lines = check
    layers, kv_heads, head_dim, chunk, sink, window = 2, 2, 16, 128, 16, 64
    per_entry = 2 * head_dim * 2  # K and V of one head, bf16
    for length in (256, 512):
        hf = next(r for r in rows(lines, "hf") if r["tokens"] == length)
        got = {case: next(r for r in rows(lines, case) if r["tokens"] == length) for case in KVBENCH_CASES}
        # full attention holds what the plain model's DynamicCache holds, and measures a footprint of 1
        assert got["full"]["kv_peak_bytes"] == hf["kv_bytes"] == layers * kv_heads * length * per_entry
        assert got["full"]["kv_footprint"] == 1.0
        # StreamingLLM: a layer holds sink + window + a chunk while it evicts; the layers before it sink + window
        held = (sink + window + chunk) + (layers - 1) * (sink + window)
        assert got["streamingllm"]["kv_peak_bytes"] == kv_heads * held * per_entry
        for case in KVBENCH_CASES:
            assert got[case]["kv_transient_peak_bytes"] >= got[case]["kv_peak_bytes"]
            assert got[case]["allocator_peak_bytes"] is None  # no GPU here
            assert rows(lines, f"{case}_vs_hf")  # the ratio to the plain model, at each length
        assert got["snapkv_patched"]["kv_footprint"] < 1 and got["duoattention"]["kv_footprint"] < 1
