"""PyramidKV (Cai et al., 2024): SnapKV's scores, with per-layer budgets that shrink with depth
(lower layers attend broadly, upper layers focus) and sum to SnapKV's total at the same `keep`."""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.method import ModelShape, require
from kvbench.methods.snapkv import SnapKV


@dataclass
class PyramidKV(SnapKV):
    beta: float = 20.0

    name = "pyramidkv"
    description = "SnapKV scoring with per-layer budgets decreasing with depth (same total)."

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.beta, (int, float)) and self.beta >= 1, f"beta must be >= 1; got {self.beta!r}")

    def bind(self, shape: ModelShape) -> None:
        self.num_layers = shape.num_layers

    def layer_budget(self, layer: int, k: int) -> int:
        # An arithmetic sequence from (2 - 1/beta) k down to k / beta: its mean is k.
        layers = self.num_layers
        if layers == 1:
            return k
        smallest = k / self.beta
        largest = 2 * k - smallest
        return round(largest - layer * (largest - smallest) / (layers - 1))
