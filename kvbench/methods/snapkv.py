"""SnapKV (Li et al., 2024): the attention of the last `obs_window` queries, smoothed over
neighbouring entries with a pooling `kernel`, picks the entries each KV head keeps.

As the reference the paper ran (MInference's SnapKV/PyramidKV clusters), the window's attention is a
softmax over the entries that compete at this step only (a chunk's own entries; post-fill: the whole
prompt), and it is pooled over the entries that can be evicted, zero-padded at their edges: the held past
and the always-kept recent window neither dilute nor leak into the scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from kvbench.method import KeepView, ScoreMethod, require


def pooled_window_attention(view: KeepView, obs_window: int, kernel: int, recent: int = 0):
    """[h, n]: the window's attention over the competing entries (`view.candidates`, all held if unset),
    average-pooled with `kernel` over the candidates less their last `recent`; 0 elsewhere."""
    candidates = view.candidates if view.candidates is not None else range(0, view.num_held - view.num_scoring)
    scores = view.attention_scores(last=obs_window, since=candidates.start)
    if kernel > 1:  # keep neighbours of important entries too (SnapKV's clustering)
        start, stop = candidates.start, candidates.stop - min(recent, len(candidates))
        pool = F.avg_pool1d(scores[:, None, start:stop], kernel, stride=1, padding=kernel // 2)[:, 0]
        scores = scores.clone()
        scores[:, start:stop] = pool
    return scores


@dataclass
class SnapKV(ScoreMethod):
    kernel: int = 5

    name = "snapkv"
    description = "Keeps the entries the last obs_window queries attend to most (pooled), per KV head."

    def validate(self) -> None:
        super().validate()
        require(
            isinstance(self.kernel, int) and self.kernel >= 1 and self.kernel % 2 == 1,
            f"kernel must be an odd integer >= 1; got {self.kernel!r}",
        )

    def score(self, view: KeepView):
        return pooled_window_attention(view, self.obs_window, self.kernel, self.recent)
