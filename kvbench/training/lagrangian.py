"""The min-max sparsity constraint of PruLong (after CoFi / Sheared-LLaMA's structured pruning).

    penalty = lambda1 * (s - t) + lambda2 * (s - t) ** 2

is added to the loss. The gates descend on it; lambda1 and lambda2 *ascend* on it (their optimizer runs with
`maximize=True`), so whenever the expected sparsity s misses the target t the multipliers grow in the
direction that makes missing it costlier, until the gates meet the target.
"""

from __future__ import annotations

import torch
from torch import nn

from kvbench.training.patterns import check_sparsity


class SparsityLagrangian(nn.Module):
    def __init__(self):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.zeros(()))
        self.lambda2 = nn.Parameter(torch.zeros(()))

    def forward(self, sparsity: torch.Tensor, target: float) -> torch.Tensor:
        gap = sparsity - target
        return self.lambda1 * gap + self.lambda2 * gap * gap

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        """Gradient *ascent* on the multipliers (plain SGD, maximize=True)."""
        return torch.optim.SGD(self.parameters(), lr=lr, maximize=True)


def target_sparsity(step: int, total_steps: int, target: float, warmup_fraction: float = 0.8) -> float:
    """The target, ramped linearly from 0 over the first `warmup_fraction` of training (PruLong: 80%)."""
    check_target(target)
    warmup = warmup_fraction * total_steps
    if warmup <= 0:
        return target
    return target * min(1.0, step / warmup)


def check_target(target) -> None:
    check_sparsity(target, "target sparsity (the share of streaming heads)")
