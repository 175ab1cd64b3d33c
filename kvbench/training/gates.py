"""Hard-concrete gates (Louizos et al., 2018), one per (layer, KV head), as PruLong trains them.

A gate z in [0, 1] is a stretched, clipped binary-concrete sample: with u ~ U(0, 1),

    s = sigmoid((log u - log(1 - u) + log_alpha) / temperature),   z = clip(s * (r - l) + l, 0, 1)

With the stretch interval (l, r) = (-0.1, 1.1) a gate is exactly 0 or exactly 1 with positive probability,
yet the sample is differentiable in log_alpha. z = 1 means the head keeps the full cache, z = 0 that it
keeps only sinks plus a local window.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TEMPERATURE = 2 / 3
STRETCH = (-0.1, 1.1)
LOG_ALPHA_INIT = 4.5  # gates start almost surely open: every head begins as a full-attention head
LOG_ALPHA_INIT_STD = 0.01


class HardConcreteGates(nn.Module):
    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        temperature: float = TEMPERATURE,
        stretch: tuple[float, float] = STRETCH,
        init: float = LOG_ALPHA_INIT,
        init_std: float = LOG_ALPHA_INIT_STD,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        low, high = stretch
        if not (low < 0 and high > 1):
            raise ValueError(f"the stretch interval must contain [0, 1] strictly (l < 0 < 1 < r); got {stretch}")
        if temperature <= 0:
            raise ValueError(f"the hard-concrete temperature must be > 0; got {temperature}")
        self.temperature, self.low, self.high = temperature, low, high
        alpha = init + init_std * torch.randn(num_layers, num_kv_heads, generator=generator)
        self.log_alpha = nn.Parameter(alpha)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One differentiable gate sample per (layer, KV head)."""
        eps = 1e-6  # keep log u and log(1 - u) finite
        u = torch.rand(self.log_alpha.shape, generator=generator, device=self.log_alpha.device)
        u = u.clamp(eps, 1 - eps).to(self.log_alpha.dtype)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.temperature)
        return (s * (self.high - self.low) + self.low).clamp(0.0, 1.0)

    def deterministic(self) -> torch.Tensor:
        """The gate without noise (u = 1/2), for evaluation."""
        s = torch.sigmoid(self.log_alpha / self.temperature)
        return (s * (self.high - self.low) + self.low).clamp(0.0, 1.0)

    def open_probability(self) -> torch.Tensor:
        """P(z > 0) per gate, in closed form: sigmoid(log_alpha - temperature * log(-l / r))."""
        return torch.sigmoid(self.log_alpha - self.temperature * math.log(-self.low / self.high))

    def closed_probability(self) -> torch.Tensor:
        """P(z = 0) per gate: 1 - P(z > 0)."""
        return 1 - self.open_probability()

    def fully_open_probability(self) -> torch.Tensor:
        """P(z = 1) per gate: sigmoid(log_alpha - temperature * log((1 - l) / (r - 1)))."""
        return torch.sigmoid(self.log_alpha - self.temperature * math.log((1 - self.low) / (self.high - 1)))

    def expected_sparsity(self) -> torch.Tensor:
        """The expected share of streaming heads (closed gates): what the constraint steers to the target."""
        return self.closed_probability().mean()
