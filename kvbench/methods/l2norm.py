"""L2-norm eviction (Devoto et al., 2024): keys with a low L2 norm draw high attention, so each KV
head keeps its lowest-norm keys. Needs no attention weights at all."""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.method import KeepView, ScoreMethod


@dataclass
class L2Norm(ScoreMethod):
    name = "l2norm"
    description = "Keeps the keys with the lowest L2 norm, per KV head."

    def score(self, view: KeepView):
        return -view.keys.float().norm(dim=-1)
