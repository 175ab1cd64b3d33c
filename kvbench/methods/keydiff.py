"""KeyDiff (Park et al., 2025, arXiv 2504.15364): keep the keys least like the others. Each KV head's anchor is the
mean direction of its held keys (each key scaled to unit length first); an entry's score is minus its key's cosine
similarity to that anchor, so the most distinctive keys are kept. It reads neither queries nor attention weights:
its choice is the same with or without the question (query-agnostic by construction), and it runs with any kernel.
As kvpress's KeyDiffPress, the anchor is taken over the entries being scored; here over every entry held at the step
but a patched schedule's scoring tail, which is not part of the cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from kvbench.method import KeepView, ScoreMethod


@dataclass
class KeyDiff(ScoreMethod):
    name = "keydiff"
    description = "Keeps the keys least similar (cosine) to their head's mean key direction; reads no query."

    def score(self, view: KeepView) -> torch.Tensor:
        keys = F.normalize(view.keys.float(), dim=-1)  # [h, n, d]
        cached = keys[:, : view.num_held - view.num_scoring]
        anchor = F.normalize(cached.mean(dim=1, keepdim=True), dim=-1)  # [h, 1, d]
        return -(keys * anchor).sum(dim=-1)  # [h, n]
