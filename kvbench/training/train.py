"""`kvbench prulong train`: PruLong's head-pattern training (Bhaskar et al., 2025, section 4, appendix B).

One hard-concrete gate z per (layer, KV head); every head's attention output is z * full + (1 - z) *
streaming (sinks + local window). The model's weights stay frozen; the gates minimise

    next-token loss + lambda1 * (s - t) + lambda2 * (s - t) ** 2

where s is the expected share of closed gates (streaming heads) and t the target, ramped up over the first
80% of steps, while lambda1 and lambda2 ascend on the same objective (min-max). The learned log-alpha is the
head score: at inference the top (1 - sparsity) heads keep the full cache.

Outputs in OUT/: scores.tsv (log-alpha, [layers, KV heads]: method=prulong reads it at any head_sparsity),
pattern.tsv (binary, 1 = full, at the export sparsity), training_log.jsonl, settings.json.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kvbench.method import ModelShape
from kvbench.training import data, patterns
from kvbench.training.common import Trainer, TrainSettings, final_hidden
from kvbench.training.gates import HardConcreteGates
from kvbench.training.lagrangian import SparsityLagrangian, check_target, target_sparsity


class GatedModel(nn.Module):
    def __init__(self, model, settings: TrainSettings, target: float, warmup: float, generator=None):
        super().__init__()
        self.model = model  # frozen
        shape = ModelShape.from_config(model.config)
        self.gates = HardConcreteGates(shape.num_layers, shape.num_kv_heads, generator=generator)
        self.lagrangian = SparsityLagrangian()
        self.settings, self.target, self.warmup = settings, target, warmup

    def forward(self, ids, loss_mask, step: int):
        z = self.gates.sample()
        hidden = final_hidden(self.model, ids, z, self.settings)
        lm_loss = data.next_token_loss(self.model, hidden, ids, loss_mask)
        t = target_sparsity(step, self.settings.steps, self.target, self.warmup)
        sparsity = self.gates.expected_sparsity()
        loss = lm_loss + self.lagrangian(sparsity, t)
        return loss, {
            "lm_loss": lm_loss.item(),
            "expected_sparsity": sparsity.item(),
            "target": t,
            "lambda1": self.lagrangian.lambda1.item(),
            "lambda2": self.lagrangian.lambda2.item(),
        }


class PruLongTrainer(Trainer):
    name = "prulong"

    def __init__(
        self,
        settings: TrainSettings,
        target_sparsity: float = 0.5,
        warmup_fraction: float = 0.8,
        lambda_lr: float = 1.0,
        export_sparsity: float | None = None,
        min_full_per_layer: int = 0,
    ):
        check_target(target_sparsity)
        if not 0 <= warmup_fraction <= 1:
            raise ValueError(f"warmup fraction must be in [0, 1]; got {warmup_fraction!r}")
        if not lambda_lr > 0:
            raise ValueError(f"lambda lr must be > 0; got {lambda_lr!r}")
        self.target, self.warmup, self.lambda_lr = target_sparsity, warmup_fraction, lambda_lr
        self.export_sparsity = target_sparsity if export_sparsity is None else export_sparsity
        patterns.check_sparsity(self.export_sparsity)
        self.min_full_per_layer = min_full_per_layer
        super().__init__(settings)
        # Refuse now, not after training, an export no learned scores could satisfy.
        layers, heads = self.shape.num_layers, self.shape.num_kv_heads
        patterns.binary_pattern(torch.zeros(layers, heads), 0.0, min_full_per_layer)  # checks the minimum's range
        if round(self.export_sparsity * layers * heads) > layers * (heads - min_full_per_layer):
            raise ValueError(
                f"export sparsity {self.export_sparsity} makes {round(self.export_sparsity * layers * heads)} of "
                f"{layers * heads} heads streaming, but --min-full-per-layer {min_full_per_layer} keeps at least "
                f"{layers * min_full_per_layer} full: lower one of them"
            )

    def make_trainable(self) -> nn.Module:
        generator = torch.Generator().manual_seed(self.settings.seed)
        return GatedModel(self.model, self.settings, self.target, self.warmup, generator)

    def optimizers(self):
        gated = self.trainable
        # Short second-moment memory (beta2 0.9): a head whose closing once cost a large loss would otherwise
        # keep Adam's step tiny for hundreds of steps, while the multipliers wind up and overshoot.
        gates = torch.optim.Adam(gated.gates.parameters(), lr=self.settings.lr, betas=(0.5, 0.9))
        return [gates, gated.lagrangian.optimizer(self.lambda_lr)]

    def save(self, log: list[dict]) -> dict:
        out = Path(self.settings.out)
        gates = self.trainable.gates
        scores = gates.log_alpha.detach().double().cpu()
        patterns.write_table(scores, out / "scores.tsv")  # first: an export refused below loses no training
        try:
            pattern = patterns.binary_pattern(scores, self.export_sparsity, self.min_full_per_layer)
        except ValueError as error:
            raise ValueError(
                f"{error} (the learned scores are saved in {out / 'scores.tsv'}: "
                "`kvbench prulong export` them at another sparsity)"
            ) from None
        patterns.write_table(pattern, out / "pattern.tsv")
        with torch.no_grad():
            return {
                "scores": out / "scores.tsv",
                "pattern": out / "pattern.tsv",
                "log": log,
                "expected_sparsity": gates.expected_sparsity().item(),
                "deterministic_sparsity": (gates.deterministic() == 0).double().mean().item(),
            }
