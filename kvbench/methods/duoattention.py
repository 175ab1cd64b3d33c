"""DuoAttention (Xiao et al., 2024): retrieval heads keep the full cache, streaming heads keep
attention sinks plus a local window. The pattern is DuoAttention's released gate values."""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.methods.head_pattern import HeadPatternMethod


@dataclass
class DuoAttention(HeadPatternMethod):
    name = "duoattention"
    description = "Full cache for high-gate heads, sinks + window for the rest (DuoAttention's TSV gates)."

    def check_scores(self, scores):
        if scores.min() < 0 or scores.max() > 1:
            raise ValueError(
                f"head pattern {self.pattern}: DuoAttention gate values lie in [0, 1]; "
                f"got {float(scores.min()):.3g}..{float(scores.max()):.3g}"
            )
        return scores
