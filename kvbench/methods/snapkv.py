"""SnapKV (Li et al., 2024): the attention of the last `obs_window` queries, smoothed over
neighbouring entries with a pooling `kernel`, picks the entries each KV head keeps."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from kvbench.method import KeepView, ScoreMethod, require


def pooled_window_attention(view: KeepView, obs_window: int, kernel: int):
    scores = view.attention_scores(last=obs_window)
    if kernel > 1:  # keep neighbours of important entries too (SnapKV's clustering)
        scores = F.avg_pool1d(scores[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]
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
        return pooled_window_attention(view, self.obs_window, self.kernel)
