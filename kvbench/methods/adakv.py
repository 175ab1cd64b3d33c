"""Ada-KV (Feng et al., 2024, arXiv 2407.11550): head-adaptive budgets over any score method (`scorer=snapkv` by
default). At each eviction a layer keeps as many entries by score as a uniform split would (k per KV head), but they
are chosen by the scores of all its heads together, so a head whose attention is spread out keeps more than one that
attends to a few entries. A safeguard keeps each head's `alpha_safeguard` share of its uniform hold (k plus its recent
window) by its own best scores first, so that no head is emptied. The recent window is kept by every head, as for
every score method.

Each KV head is stored in its own head group, so the per-head budgets are physical: a head holds its own count of
entries, and the freed ones are gone (kvpress's AdaKVPress keeps every entry and masks the evicted ones in attention).
The scores of different heads are compared directly, which suits scorers whose scores are attention shares (snapkv,
pyramidkv's scores, expected_attention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvbench.method import KeepView, ModelShape, require
from kvbench.methods.scorer_wrapper import ScorerWrapper


@dataclass
class AdaKV(ScorerWrapper):
    alpha_safeguard: float = 0.2

    name = "adakv"
    description = "Spreads each layer's budget over its KV heads by the scores of all heads (Ada-KV), over a scorer."

    def validate(self) -> None:
        super().validate()
        require(
            isinstance(self.alpha_safeguard, (int, float)) and 0 <= self.alpha_safeguard <= 1,
            f"alpha_safeguard must be in [0, 1]; got {self.alpha_safeguard!r}",
        )

    def head_groups(self, layer: int, shape: ModelShape) -> list[list[int]]:
        return [[head] for head in range(shape.num_kv_heads)]  # one group per KV head: each holds its own count

    def select(self, view: KeepView) -> torch.Tensor | None:
        return self.select_layer([view])[0]

    def select_layer(self, views) -> list[torch.Tensor | None]:
        views = list(views)
        plans = [self.eviction_plan(view) for view in views]
        evicting = [i for i, plan in enumerate(plans) if plan is not None]
        answers: list[torch.Tensor | None] = [None] * len(views)
        if not evicting:
            return answers
        pools, forced_masks, total = [], [], 0
        for i in evicting:
            view, (candidates, k) = views[i], plans[i]
            view.candidates = candidates
            scores = self.checked_scores(view)  # [heads of the group, held]
            window = min(self.recent, len(candidates))
            pool = scores[:, candidates.start : candidates.stop - window].float()  # what competes by score
            k = min(k, pool.shape[-1])
            # The safeguard: the head's own best entries, up to alpha of what a uniform split would hold.
            safe = max(0, min(k, int(self.alpha_safeguard * (k + window)) - window))
            forced = torch.zeros_like(pool, dtype=torch.bool)
            forced.scatter_(-1, pool.topk(safe, dim=-1).indices, True)
            pools.append(pool)
            forced_masks.append(forced)
            total += k * pool.shape[0]
        flat = torch.cat([pool.flatten() for pool in pools])
        flat = flat.masked_fill(torch.cat([forced.flatten() for forced in forced_masks]), float("inf"))
        chosen = torch.zeros_like(flat, dtype=torch.bool)
        chosen[flat.topk(min(total, flat.numel())).indices] = True
        offset = 0
        for i, pool in zip(evicting, pools):
            view, (candidates, _) = views[i], plans[i]
            mine = chosen[offset : offset + pool.numel()].view(pool.shape)
            offset += pool.numel()
            answers[i] = _kept(view, candidates, mine, self.recent)
        return answers


def _kept(view: KeepView, candidates: range, chosen: torch.Tensor, recent: int) -> torch.Tensor:
    """Held indices one head (a one-head group) keeps: every entry outside `candidates`, its recent window, and the
    pool entries `chosen` [1, pool]; [1, kept] ascending."""
    require(chosen.shape[0] == 1, "adakv stores one KV head per group")
    device = view.positions.device
    window_start = candidates.stop - min(recent, len(candidates))
    picked = chosen[0].nonzero().flatten() + candidates.start
    index = torch.cat(
        [
            torch.arange(0, candidates.start, device=device),
            picked.to(device),
            torch.arange(window_start, view.num_held, device=device),
        ]
    )
    return index[None]
