"""The KV trace: entries held after each step's append and after its eviction, as the paper's accounting says;
its area is the footprint and its maximum the peak; tracing changes nothing; a 128K-token trace stays small."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_prompt, tiny_model

from kvbench import generate
from kvbench.ledger import Ledger
from kvbench.methods.full import Full
from kvbench.methods.snapkv import SnapKV
from kvbench.methods.streamingllm import StreamingLLM

PROMPT, CHUNK, DECODE = 300, 64, 5
SINK, WINDOW, KEEP, RECENT = 4, 40, 0.25, 8


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def steps():
    """(start, new, is_decode) of every forward step: 5 chunks (the last of 44 tokens), then 5 decode steps."""
    out = [(start, min(CHUNK, PROMPT - start), False) for start in range(0, PROMPT, CHUNK)]
    return out + [(PROMPT + i, 1, True) for i in range(DECODE)]


def expected(kind: str) -> list[tuple[int, int]]:
    """(held before, held after eviction) per step, one head, from the paper's accounting."""
    held, rows = 0, []
    for start, new, is_decode in steps():
        if kind == "full":
            after = held + new
        elif kind == "streaming":
            after = min(held + new, SINK + WINDOW)
        elif kind == "chunked":  # each chunk keeps round(keep x c) + recent of its own entries; decode keeps all
            after = held + (new if is_decode else min(round(KEEP * new) + RECENT, new))
        else:  # post-fill: everything until the prompt's last chunk, then round(keep x prompt) + recent
            after = held + new if start + new != PROMPT else round(KEEP * PROMPT) + RECENT
        rows.append((held, after))
        held = after
    return rows


METHODS = {
    "full": Full,
    "streaming": lambda: StreamingLLM(sink=SINK, window=WINDOW),
    "chunked": lambda: SnapKV(keep=KEEP, recent=RECENT, obs_window=8, schedule="chunked"),
    "postfill": lambda: SnapKV(keep=KEEP, recent=RECENT, obs_window=8, schedule="postfill"),
}


def run(model, kind, trace=True):
    return generate(
        model,
        random_prompt(PROMPT, seed=2),
        METHODS[kind](),
        chunk_size=CHUNK,
        max_new_tokens=DECODE + 1,
        eos_token_id=[],
        return_logits=True,
        trace=trace,
    )


@pytest.mark.parametrize("kind", sorted(METHODS))
def test_the_trace_follows_the_papers_accounting_step_by_step(model, kind):
    result = run(model, kind)
    points = result.trace
    assert [p["new"] for p in points] == [new for _, new, _ in steps()]
    assert [p["tokens"] for p in points] == [start + new for start, new, _ in steps()]
    rows = expected(kind)
    assert [p["held_peak"] for p in points] == [before + new for (before, _), (_, new, _) in zip(rows, steps())]
    assert [p["held"] for p in points] == [after for _, after in rows]
    # bytes: 2 layers x 2 KV heads, an entry's K and V of head_dim 16 in fp32 = 128 bytes per head. Physically the
    # layers run in turn: layer 0 appends and evicts before layer 1 appends, so a step's peak is the larger of
    # (layer 0 appended, layer 1 as before) and (layer 0 evicted, layer 1 appended).
    entry = 2 * 16 * 4
    assert [p["bytes"] for p in points] == [4 * after * entry for _, after in rows]
    assert [p["bytes_peak"] for p in points] == [
        (2 * (before + new) + 2 * max(before, after)) * entry for (before, after), (_, new, _) in zip(rows, steps())
    ]
    # its area is the footprint, its maximum the peak
    tokens = result.stats.tokens
    assert sum(p["active"] for p in points) == pytest.approx(result.stats.kv_footprint * tokens * (tokens + 1) / 2)
    assert max(p["held_peak"] for p in points) == pytest.approx(result.stats.kv_peak * tokens)


@pytest.mark.parametrize("kind", ["streaming", "chunked"])
def test_tracing_changes_no_logit_and_no_footprint(model, kind):
    traced, plain = run(model, kind, trace=True), run(model, kind, trace=False)
    assert plain.trace is None and traced.trace
    assert traced.token_ids == plain.token_ids and traced.stats == plain.stats
    assert all(torch.equal(a, b) for a, b in zip(traced.logits, plain.logits, strict=True))


def test_a_128k_token_trace_stays_under_512_points_and_64_kib():
    """131,072 prompt tokens in chunks of 1,024, then 2,000 decode steps, through the ledger alone (what the cache
    feeds it), StreamingLLM-like: the trace merges neighbours past 512 points, keeping its area and peak exact."""
    ledger = Ledger(num_layers=1, num_kv_heads=1, trace=True)
    held, active, peak = 0, 0.0, 0
    for new in [1024] * 128 + [1] * 2000:
        ledger.record_step(0, [0], held_before=held, new=new)
        ledger.record_memory(new * 8, new)
        ledger.end_step()
        active += new * (new + 1) / 2 + new * held
        peak = max(peak, held + new)
        kept = min(held + new, 4096)
        ledger.record_memory((kept - held - new) * 8, kept - held - new)
        held = kept
    points = ledger.trace.all_points
    assert len(points) <= 512 and len(json.dumps(points)) < 64 * 1024
    assert len({p["new"] for p in points[-100:]}) == 1  # evenly spread: every late point covers as many steps
    assert points[-1]["tokens"] == 131072 + 2000
    assert sum(p["active"] for p in points) == pytest.approx(active)
    assert max(p["held_peak"] for p in points) == peak
