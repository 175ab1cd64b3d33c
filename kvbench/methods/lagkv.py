"""LagKV (Liang et al., 2025, arXiv 2504.04704): score a token by how much its key and value stand out against the
tokens that follow it. The competing entries after the first `n_sink` are cut into partitions of `lag_size`; each
partition is judged against the next one (its "lag" reference): every channel of a token's key is put on the scale
of that channel's min..max over the reference partition, the spread (standard deviation) of those channels is the
token's raw score, a softmax over the partition makes the scores a distribution, and keys and values are averaged.
By default (`cross_scoring` False) the scores then become ranks within the partition / `lag_size`, so that every
partition loses the same share; with `cross_scoring` the softmax values compete across partitions. The sink and
the tail that has no reference (the last full partition and the partial one after it) score above every partition.

It reads keys and values only, never queries or attention weights: its choice is the same with or without the
question (query-agnostic by construction) and it runs with any kernel; the patched schedule runs but keeps what
the chunked one keeps (the scoring tail is the prompt's end, not the partition after a chunk's last).

Where it differs from kvpress's LagKVPress, and why:
- The partitions are those of the step's competing entries (`view.candidates`: a chunk's new entries, the prompt
  post-fill, everything held under `budget`), so under the chunked schedule every chunk has its own sink and
  tail, as kvpress's per-chunk compression has. After an earlier eviction (`budget`) a partition's entries need
  not be consecutive tokens.
- kvbench's `recent` window (kept on top of `keep`) overlaps the reference-less tail: the tail's last `recent`
  entries are kept free, the rest of it (and the sink) by its top score, out of `keep`'s count. With `recent`
  <= lag_size (the defaults, 64 and 128) the window lies inside the tail, so the kept set is the reference's for
  the same total number of entries (up to ties of rank).
- With fewer than n_sink + 2 * lag_size competing entries there is no partition with a reference; as the
  reference does, the sink is kept and then the most recent entries (a StreamingLLM window of `keep`'s size).
  So under the chunked schedule a chunk shorter than that is only a recency cut.
- Always-kept entries are ordered (the sink, then the tail with its latest first) where the reference ties
  them, so that a budget smaller than them keeps a definite set; ties of rank across partitions are top-k's.
- Scores are computed in float32 (the reference: the model's dtype, where ranks / lag_size may round together),
  partitions in blocks of at most SCORE_BLOCK_BYTES; a channel constant over its reference partition (zero range,
  a division by zero there, NaN scores) is only shifted, not scaled; `lag_size` is at least 2 (a one-token
  reference has no range at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvbench.method import SCORE_BLOCK_BYTES, KeepView, ScoreMethod, require

# Always-kept entries score above every partition score (ranks < 1, softmax values <= 1): the tail in [2, 3),
# latest highest, then the sink above it.
TAIL_SCORE, SINK_SCORE = 2.0, 3.0


def lag_relative_scores(states: torch.Tensor) -> torch.Tensor:
    """[h, m, lag, d] partitions -> [h, m - 1, lag]: each partition but the last, scored against the next (the
    spread of a token's channels on the reference's min..max scale), a softmax within the partition."""
    scored, reference = states[:, :-1].float(), states[:, 1:].float()
    low = reference.amin(dim=2, keepdim=True)
    span = reference.amax(dim=2, keepdim=True) - low
    span = torch.where(span > 0, span, torch.ones_like(span))  # a constant channel: shifted, not divided by 0
    return ((scored - low) / span).std(dim=-1).softmax(dim=-1)


@dataclass
class LagKV(ScoreMethod):
    n_sink: int = 4
    lag_size: int = 128
    cross_scoring: bool = False

    name = "lagkv"
    description = (
        "Keeps the tokens whose keys and values stand out against the next lag_size tokens' range (LagKV); "
        "reads no query."
    )

    def validate(self) -> None:
        super().validate()
        require(
            isinstance(self.n_sink, int) and not isinstance(self.n_sink, bool) and self.n_sink >= 0,
            f"n_sink must be an integer >= 0; got {self.n_sink!r}",
        )
        require(
            isinstance(self.lag_size, int) and not isinstance(self.lag_size, bool) and self.lag_size >= 2,
            f"lag_size must be an integer >= 2 (a reference partition needs a range); got {self.lag_size!r}",
        )
        require(
            isinstance(self.cross_scoring, bool), f"cross_scoring must be true or false; got {self.cross_scoring!r}"
        )

    def score(self, view: KeepView) -> torch.Tensor:
        candidates = view.candidates if view.candidates is not None else range(0, view.num_held - view.num_scoring)
        heads, device = len(view.heads), view.keys.device
        scores = torch.zeros(heads, view.num_held, device=device)
        start, stop = candidates.start, candidates.stop
        sink_stop = min(start + self.n_sink, stop)
        partitions = (stop - sink_stop) // self.lag_size
        # With two full partitions or more, all but the last have a reference; the rest is the tail.
        scored_stop = sink_stop + (partitions - 1) * self.lag_size if partitions >= 2 else sink_stop
        if scored_stop > sink_stop:
            scores[:, sink_stop:scored_stop] = self.partition_scores(view, sink_stop, partitions)
        tail = stop - scored_stop
        scores[:, scored_stop:stop] = TAIL_SCORE + torch.arange(tail, device=device) / max(tail, 1)
        scores[:, start:sink_stop] = SINK_SCORE
        return scores

    def partition_scores(self, view: KeepView, first: int, partitions: int) -> torch.Tensor:
        """[h, (partitions - 1) * lag_size]: the scores of the partitions from held index `first` that have a
        reference, computed a block of partitions at a time."""
        heads, dim, lag = len(view.heads), view.keys.shape[-1], self.lag_size
        block = max(1, SCORE_BLOCK_BYTES // (4 * heads * lag * dim))
        parts = []
        for begin in range(0, partitions - 1, block):
            count = min(block, partitions - 1 - begin) + 1  # the block and its last partition's reference
            span = slice(first + begin * lag, first + (begin + count) * lag)
            keys = view.keys[:, span].reshape(heads, count, lag, dim)
            values = view.values[:, span].reshape(heads, count, lag, dim)
            score = (lag_relative_scores(keys) + lag_relative_scores(values)) / 2  # [h, count - 1, lag]
            if not self.cross_scoring:  # ranks within the partition, in [0, 1)
                score = score.argsort(dim=-1, stable=True).argsort(dim=-1).float() / lag
            parts.append(score.reshape(heads, -1))
        return torch.cat(parts, dim=1)
