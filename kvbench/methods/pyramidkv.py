"""PyramidKV (Cai et al., 2024): SnapKV's scores, with per-layer budgets that shrink with depth (lower
layers attend broadly, upper layers focus), computed as the reference does (PyramidKV's `PyramidKVCluster`,
which the paper's code runs): an arithmetic sequence around SnapKV's per-layer budget, clipped to what a
layer can hold, and SnapKV's uniform budget when the step is too short for a pyramid."""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.method import ModelShape, require
from kvbench.methods.snapkv import SnapKV


@dataclass
class PyramidKV(SnapKV):
    beta: int = 20

    name = "pyramidkv"
    description = "SnapKV scoring with per-layer budgets decreasing with depth (PyramidKV's schedule)."

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.beta, int) and self.beta >= 1, f"beta must be an integer >= 1; got {self.beta!r}")

    def bind(self, shape: ModelShape) -> None:
        self.num_layers = shape.num_layers

    def layer_budget(self, layer: int, k: int, candidates: int) -> int:
        """With k the average layer's budget (kept by score, beyond the recent window) and `candidates` the step's
        competing entries (the reference's q_len, window included):
        - candidates < 2k: SnapKV's k at every layer (the reference's short-prompt fallback);
        - else from `largest` = 2k - k // beta at layer 0 down by `step` = (largest - smallest) // (layers - 1),
          with `smallest` = k // beta; when `largest` exceeds the entries outside the window, it is clipped to
          them and `smallest` raised to 2k - largest. The layers' mean is k, up to the integer step's rounding,
          which the reference has too: the total exceeds SnapKV's by layers x remainder / 2, where remainder =
          (largest - smallest) mod (layers - 1).
        """
        if self.num_layers == 1 or candidates < 2 * k:
            return k
        smallest = k // self.beta
        largest = 2 * k - smallest
        outside_window = candidates - min(self.recent, candidates)
        if largest >= outside_window:
            largest = outside_window
            smallest = 2 * k - largest
        step = (largest - smallest) // (self.num_layers - 1)
        return largest - layer * step
