"""H2O (Zhang et al., 2023): "heavy hitters", the entries with the most attention accumulated over
every query so far, plus a recent window. It keeps evicting while decoding: each decode step
drops one entry (or holds `budget`), so the cache stays the size the prompt left it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvbench.method import KeepView, ModelShape, ScoreMethod


@dataclass
class H2O(ScoreMethod):
    name = "h2o"
    description = "Keeps heavy hitters (most accumulated attention) plus a recent window; evicts while decoding."

    def evicts_while_decoding(self) -> bool:
        return True

    def bind(self, shape: ModelShape) -> None:
        self.accumulated: dict[tuple[int, int], torch.Tensor] = {}  # per (layer, group), aligned with held

    def select(self, view: KeepView):
        key = (view.layer, view.group)
        count = view.queries.shape[2]
        scores = view.attention_scores() * count  # summed over the step's queries
        previous = self.accumulated.get(key)
        if previous is not None:
            scores[:, : previous.shape[1]] += previous
        self.current = scores
        end = view.num_held - view.num_scoring
        if view.phase.is_decode and self.budget is None:
            # Hold the size the prompt left: drop one entry per step (keep=1 keeps everything).
            evict = self.keep < 1 and end > self.recent + 1
            index = view.top_k(scores, end - 1 - self.recent, range(0, end), self.recent) if evict else None
        else:
            index = super().select(view)
        kept = scores if index is None else torch.gather(scores, 1, index)
        self.accumulated[key] = kept[:, : kept.shape[1] - view.num_scoring]  # the cache drops the scoring tail
        return index

    def score(self, view: KeepView):
        return self.current
