"""KV footprint accounting (DESIGN.md, "Footprint accounting"), and the paper's analytic formula.

The ledger is fed by the cache as a request runs: for every forward step of c new tokens while a
head holds P entries, that head's *active* entries grow by c(c+1)/2 + c*P and its peak candidate is
P + c. The footprint is the active total relative to full attention's, T(T+1)/2, averaged over
layers and KV heads; full attention is exactly 1.0 at any chunk size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class FootprintStats:
    """What one request cost in KV entries, measured from the cache that ran."""

    kv_footprint: float  # active entries relative to full attention (byte-weighted)
    kv_peak: float  # largest mean entries held at once (over layers and KV heads), relative to T
    kv_peak_bytes: int  # largest physical KV memory held at once, all layers, in the order they ran
    kv_entries: int  # largest number of KV entries held at once, all layers and KV heads
    tokens: int  # T: tokens the model processed (prompt plus decode steps)

    def as_dict(self) -> dict:
        return asdict(self)


class Ledger:
    """Accounts for one request. `record_step` per layer and head group; `end_step` after each forward."""

    def __init__(self, num_layers: int, num_kv_heads: int):
        self.num_heads_total = num_layers * num_kv_heads
        self.active = [[0.0] * num_kv_heads for _ in range(num_layers)]
        self.peak_mean_held = 0.0
        self._step_held = 0.0
        self.bytes_now = self.peak_bytes = 0
        self.entries_now = self.peak_entries = 0

    def record_step(self, layer: int, heads: list[int], held_before: int, new: int, weight: float = 1.0) -> None:
        """`new` tokens attend over `held_before` entries in each of `heads` (weight: bytes vs the model dtype)."""
        active = weight * (new * (new + 1) / 2 + new * held_before)
        row = self.active[layer]
        for head in heads:
            row[head] += active
        self._step_held += weight * (held_before + new) * len(heads)

    def end_step(self) -> None:
        self.peak_mean_held = max(self.peak_mean_held, self._step_held / self.num_heads_total)
        self._step_held = 0.0

    def record_memory(self, delta_bytes: int, delta_entries: int) -> None:
        """Physical change of the cache (an append or an eviction), in the order it happened."""
        self.bytes_now += delta_bytes
        self.entries_now += delta_entries
        self.peak_bytes = max(self.peak_bytes, self.bytes_now)
        self.peak_entries = max(self.peak_entries, self.entries_now)

    def stats(self, tokens: int) -> FootprintStats:
        full = tokens * (tokens + 1) / 2
        total = sum(sum(row) for row in self.active)
        return FootprintStats(
            kv_footprint=total / self.num_heads_total / full,
            kv_peak=self.peak_mean_held / tokens,
            kv_peak_bytes=self.peak_bytes,
            kv_entries=self.peak_entries,
            tokens=tokens,
        )


# ---- The paper's analytic formula (arXiv 2506.17121), for cross-checks and `kvbench footprint` ----

ANALYTIC_KINDS = ("full", "streaming", "chunked_keep", "head_mix")


def _steps(prompt_len: int, decode_steps: int, chunk_size: int):
    """(start position, new tokens, is_decode) of every forward step of a request."""
    for start in range(0, prompt_len, chunk_size):
        yield start, min(chunk_size, prompt_len - start), False
    for position in range(prompt_len, prompt_len + decode_steps):
        yield position, 1, True


def _held_trace(kind: str, prompt_len, decode_steps, chunk_size, sink, window, keep, always_keep_window):
    """Entries one head holds before each step, with the step's new tokens: [(held, new)]."""
    trace, kept = [], 0
    for start, new, is_decode in _steps(prompt_len, decode_steps, chunk_size):
        if kind == "full":
            held = start
        elif kind == "streaming":
            held = min(start, sink + window)
        else:  # chunked_keep: each chunk keeps round(keep*c) + window of its entries; decode evicts nothing
            held = kept
            kept += new if is_decode else min(round(keep * new) + always_keep_window, new)
        trace.append((held, new))
    return trace


def analytic_footprint(
    prompt_len: int,
    decode_steps: int,
    chunk_size: int,
    kind: str = "full",
    *,
    sink: int = 0,
    window: int = 0,
    keep: float = 1.0,
    always_keep_window: int = 64,
    streaming_head_share: float = 0.0,
) -> tuple[float, float]:
    """(footprint, peak) of the paper's formula for one kind of head, or a mix of streaming and full heads."""
    if kind not in ANALYTIC_KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(ANALYTIC_KINDS)}")
    if prompt_len < 1 or decode_steps < 0 or chunk_size < 1:
        raise ValueError("prompt_len and chunk_size must be >= 1 and decode_steps >= 0")
    args = (prompt_len, decode_steps, chunk_size, sink, window, keep, always_keep_window)
    if kind == "head_mix":
        streaming = _held_trace("streaming", *args)
        full = _held_trace("full", *args)
        share = streaming_head_share
        trace = [(share * s + (1 - share) * f, new) for (s, new), (f, _) in zip(streaming, full)]
    else:
        trace = _held_trace(kind, *args)
    tokens = prompt_len + decode_steps
    active = sum(new * (new + 1) / 2 + new * held for held, new in trace)
    peak = max(held + new for held, new in trace)
    return active / (tokens * (tokens + 1) / 2), peak / tokens
