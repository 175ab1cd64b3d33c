"""`kvbench duo train`: DuoAttention's head-pattern training (Xiao et al., 2024, section 3.2).

One real gate alpha in [0, 1] per (layer, KV head), starting at 1 (every head full); every head's attention
output is alpha * full + (1 - alpha) * streaming. With the model's weights frozen, the gates minimise

    distance(final hidden states with full attention, final hidden states with mixed attention) + reg * mean(alpha)

over the supervised positions (the answer of a passkey-style prompt: the synthetic recall task by default),
and are clamped back into [0, 1] after every step. The distance is the mean squared difference, as
DuoAttention's distillation loss. Heads whose gate stays high are retrieval heads: at inference the top
(1 - sparsity) gates keep the full cache.

Outputs in OUT/: gates.tsv (DuoAttention's full_attention_heads.tsv format: one row per layer, one column per
KV head; method=duoattention reads it at any head_sparsity), training_log.jsonl, settings.json.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kvbench.method import ModelShape
from kvbench.training import patterns
from kvbench.training.common import Trainer, TrainSettings, final_hidden


class DuoGates(nn.Module):
    def __init__(self, model, settings: TrainSettings, reg: float):
        super().__init__()
        self.model = model  # frozen
        shape = ModelShape.from_config(model.config)
        self.gates = nn.Parameter(torch.ones(shape.num_layers, shape.num_kv_heads))
        self.settings, self.reg = settings, reg

    def forward(self, ids, loss_mask, step: int):
        with torch.no_grad():  # the teacher: the same frozen model with every head full
            teacher = final_hidden(self.model, ids, torch.ones_like(self.gates), self.settings)
        student = final_hidden(self.model, ids, self.gates, self.settings)
        # The hidden state at position i - 1 predicts token i: compare where the loss mask supervises.
        where = loss_mask[:, 1:]
        distance = (student[:, :-1][where].float() - teacher[:, :-1][where].float()).pow(2).mean()
        penalty = self.gates.abs().mean()
        return distance + self.reg * penalty, {"distance": distance.item(), "mean_gate": penalty.item()}


class DuoTrainer(Trainer):
    name = "duoattention"

    def __init__(self, settings: TrainSettings, reg: float = 0.05):
        if not reg >= 0:
            raise ValueError(f"reg (the L1 weight on the gates) must be >= 0; got {reg!r}")
        self.reg = reg
        super().__init__(settings)

    def make_trainable(self) -> nn.Module:
        return DuoGates(self.model, self.settings, self.reg)

    def optimizers(self):
        return [torch.optim.Adam([self.trainable.gates], lr=self.settings.lr)]

    def after_step(self) -> None:
        with torch.no_grad():
            self.trainable.gates.clamp_(0.0, 1.0)

    def save(self, log: list[dict]) -> dict:
        out = Path(self.settings.out)
        gates = self.trainable.gates.detach().double().cpu()
        patterns.write_table(gates, out / "gates.tsv")
        return {"gates": out / "gates.tsv", "log": log}
