"""KV footprint accounting (DESIGN.md, "Footprint accounting"), and the paper's analytic formula.

The ledger is fed by the cache as a request runs: for every forward step of c new tokens while a
head holds P entries, that head's *active* entries grow by c(c+1)/2 + c*P and its peak candidate is
P + c. The footprint is the active total relative to full attention's, T(T+1)/2, averaged over
layers and KV heads; full attention is exactly 1.0 at any chunk size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kvbench.settings import DEFAULT_RECENT


@dataclass(frozen=True)
class FootprintStats:
    """What one request cost in KV entries, measured from the cache that ran."""

    kv_footprint: float  # active entries relative to full attention (byte-weighted)
    kv_peak: float  # largest mean entries held at once (over layers and KV heads), relative to T
    kv_peak_bytes: int  # largest physical KV memory held at once, all layers, in the order they ran
    kv_entries: int  # largest number of KV entries held at once, all layers and KV heads
    tokens: int  # T: tokens the model processed (prompt plus decode steps)
    # The largest KV memory at any moment counting transient buffers: a concatenation's new tensor while the old is
    # alive, an eviction's gathered copy, the dequantized copies a quantized group is read through, and the patched
    # schedule's scoring tail. kv_peak_bytes (entries held, the paper's quantity) plus these explain the allocator.
    kv_transient_peak_bytes: int = 0
    # Tokens a method ran through the model besides the request's own (KVzip's reconstruction of the context): compute
    # it pays, outside `tokens` and the footprint; the entries they held while they ran are in the peaks.
    extra_tokens: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class Trace:
    """KV held over a request, one point per forward step (mean over layers and KV heads, byte-weighted as the
    footprint is): `tokens` processed so far, the step's `new` tokens, its `active` entries (its share of the
    footprint's sum), `held_peak` after the step's append and `held` after its eviction, and the physical bytes
    at those two moments. Bounded: past `max_points`, neighbouring points merge in pairs and every later point
    covers as many steps (tokens, held and bytes of the last; new and active summed; peaks the largest), so the
    points stay evenly spread over the request and its area (the sum of active) and peaks stay exact."""

    def __init__(self, max_points: int = 512):
        self.max_points = max_points
        self.points: list[dict] = []
        self.tokens = 0
        self.stride, self._pending, self._pending_steps = 1, None, 0

    @staticmethod
    def _merge(a: dict, b: dict) -> dict:
        return {
            "tokens": b["tokens"],
            "new": a["new"] + b["new"],
            "active": a["active"] + b["active"],
            "held_peak": max(a["held_peak"], b["held_peak"]),
            "held": b["held"],
            "bytes_peak": max(a["bytes_peak"], b["bytes_peak"]),
            "bytes": b["bytes"],
        }

    def add(self, new: int, active: float, held_peak: float, held: float, bytes_peak: int, bytes_now: int) -> None:
        self.tokens += new
        point = {
            "tokens": self.tokens,
            "new": new,
            "active": active,
            "held_peak": held_peak,
            "held": held,
            "bytes_peak": bytes_peak,
            "bytes": bytes_now,
        }
        self._pending = point if self._pending is None else self._merge(self._pending, point)
        self._pending_steps += 1
        if self._pending_steps < self.stride:
            return
        self.points.append(self._pending)
        self._pending, self._pending_steps = None, 0
        if len(self.points) > self.max_points:
            merged = [self._merge(a, b) for a, b in zip(self.points[0::2], self.points[1::2])]
            self._pending = self.points[-1] if len(self.points) % 2 else None
            self._pending_steps = self.stride if self._pending else 0
            self.points, self.stride = merged, self.stride * 2

    @property
    def all_points(self) -> list[dict]:
        """The points, the last steps included even when they do not yet fill a point."""
        return self.points + ([self._pending] if self._pending else [])


class Ledger:
    """Accounts for one request. `record_step` per layer and head group; `end_step` after each forward.
    With `trace`, it also keeps the request's KV held over time (Trace); without, that costs nothing."""

    def __init__(self, num_layers: int, num_kv_heads: int, trace: bool = False):
        self.num_heads_total = num_layers * num_kv_heads
        self.active = [[0.0] * num_kv_heads for _ in range(num_layers)]
        self.peak_mean_held = 0.0
        self._step_held = 0.0
        self.bytes_now = self.peak_bytes = 0
        self.entries_now = self.peak_entries = 0
        self.peak_transient_bytes = 0
        self.trace = Trace() if trace else None
        self._step = {"new": 0, "active": 0.0, "weight": 1.0, "bytes_peak": 0}
        self._shared = (0.0, 0.0)  # the shared prefix's active entries and full attention's, not counted here
        self.extra_tokens = 0  # tokens of a method's own forward steps (Phase.is_extra), counted by the Step

    def share_prefix(self, tokens: int, sharers: int) -> None:
        """The request so far (a prefix of `tokens` tokens) is shared by `sharers` requests, each continuing from
        a copy of this ledger: each counts 1/sharers of the prefix's active entries, and of full attention's for
        it, so that over all of them the prefix counts once. With one sharer nothing changes."""
        if sharers < 1:
            raise ValueError(f"a shared prefix needs at least one request; got {sharers}")
        share = 1 - 1 / sharers
        self._shared = (share * self._mean_active(), share * tokens * (tokens + 1) / 2)

    def _mean_active(self) -> float:
        """Active entries so far, per layer and KV head."""
        return sum(sum(row) for row in self.active) / self.num_heads_total

    def record_step(self, layer: int, heads: list[int], held_before: int, new: int, weight: float = 1.0) -> None:
        """`new` tokens attend over `held_before` entries in each of `heads` (weight: bytes vs the model dtype)."""
        active = weight * (new * (new + 1) / 2 + new * held_before)
        row = self.active[layer]
        for head in heads:
            row[head] += active
        self._step_held += weight * (held_before + new) * len(heads)
        if self.trace is not None:
            self._step["new"], self._step["weight"] = new, weight
            self._step["active"] += active * len(heads)

    def record_extra_step(self, heads: list[int], held_before: int, new: int, weight: float = 1.0) -> None:
        """A method's own forward step (KVzip's reconstruction): `new` entries held beside `held_before` in each of
        `heads` while it runs. They count in the peak; no active entries (the footprint is the request's)."""
        self._step_held += weight * (held_before + new) * len(heads)
        if self.trace is not None:
            self._step["new"], self._step["weight"] = 0, weight

    def end_step(self) -> None:
        held_peak = self._step_held / self.num_heads_total
        self.peak_mean_held = max(self.peak_mean_held, held_peak)
        self._step_held = 0.0
        if self.trace is not None:
            step = self._step
            self.trace.add(
                step["new"],
                step["active"] / self.num_heads_total,
                held_peak,
                step["weight"] * self.entries_now / self.num_heads_total,
                step["bytes_peak"],
                self.bytes_now,
            )
            self._step = {"new": 0, "active": 0.0, "weight": 1.0, "bytes_peak": self.bytes_now}

    def record_memory(self, delta_bytes: int, delta_entries: int) -> None:
        """Physical change of the cache (an append or an eviction), in the order it happened."""
        self.bytes_now += delta_bytes
        self.entries_now += delta_entries
        self.peak_bytes = max(self.peak_bytes, self.bytes_now)
        self.peak_entries = max(self.peak_entries, self.entries_now)
        if self.trace is not None:
            self._step["bytes_peak"] = max(self._step["bytes_peak"], self.bytes_now)

    def record_transient(self, physical_bytes: int) -> None:
        """Every K/V byte alive at a moment of a step, transient buffers included (the Step tells)."""
        self.peak_transient_bytes = max(self.peak_transient_bytes, physical_bytes)

    def stats(self, tokens: int) -> FootprintStats:
        not_mine, full_not_mine = self._shared
        full = tokens * (tokens + 1) / 2 - full_not_mine
        total = self._mean_active() - not_mine
        return FootprintStats(
            kv_footprint=total / full,
            kv_peak=self.peak_mean_held / tokens,
            kv_peak_bytes=self.peak_bytes,
            kv_entries=self.peak_entries,
            tokens=tokens,
            kv_transient_peak_bytes=max(self.peak_transient_bytes, self.peak_bytes),
            extra_tokens=self.extra_tokens,
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
    always_keep_window: int = DEFAULT_RECENT,
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
