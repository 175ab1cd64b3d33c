"""L2-norm eviction (Devoto et al., 2024): keys with a low L2 norm draw high attention, so each KV
head keeps its lowest-norm keys. Needs no attention weights at all. As in the paper (and the reference
code the KV-footprint paper ran), the first `skip_layers` layers are never compressed: their key norms
do not predict attention."""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.method import KeepView, ScoreMethod, require


@dataclass
class L2Norm(ScoreMethod):
    skip_layers: int = 2

    name = "l2norm"
    description = "Keeps the keys with the lowest L2 norm, per KV head (the first skip_layers layers whole)."

    def validate(self) -> None:
        super().validate()
        require(
            isinstance(self.skip_layers, int) and self.skip_layers >= 0,
            f"skip_layers must be an integer >= 0; got {self.skip_layers!r}",
        )

    def select(self, view: KeepView):
        if view.layer < self.skip_layers:
            return None
        return super().select(view)

    def score(self, view: KeepView):
        return -view.keys.float().norm(dim=-1)
