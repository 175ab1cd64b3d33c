"""Random eviction: at each eviction, the entries kept by score are a uniformly random subset of the candidates
(the recent window is kept as by every score method). The floor a leaderboard needs: a method that cannot beat it
at a footprint learned nothing about which entries matter there. Seeded: the same seed keeps the same entries on
any device (the draw is made on the CPU per layer, head group and step)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvbench.method import KeepView, ScoreMethod, require


@dataclass
class RandomEviction(ScoreMethod):
    seed: int = 0

    name = "random"
    description = "Keeps a uniformly random share of each step's candidates (seeded), plus the recent window."

    def validate(self) -> None:
        super().validate()
        require(
            isinstance(self.seed, int) and 0 <= self.seed < 2**31,
            f"seed must be an integer in [0, 2^31); got {self.seed!r}",
        )

    def score(self, view: KeepView) -> torch.Tensor:
        phase = view.phase
        # one stream per (seed, layer, group, step); hashing a tuple of ints is the same in every Python process
        where = hash((self.seed, view.layer, view.group, phase.is_decode, phase.chunk_index)) & (2**63 - 1)
        generator = torch.Generator().manual_seed(where)
        return torch.rand(len(view.heads), view.num_held, generator=generator).to(view.keys.device)
