"""Export a learned head table in the format `method=prulong` / `method=duoattention` read.

The table is [layers, KV heads], written as TSV (one row per layer, tab-separated, as DuoAttention's
`full_attention_heads.tsv`). A *score* table (PruLong's log-alpha, DuoAttention's gates) lets the method's
`head_sparsity` knob pick any share of streaming heads; a *binary* table (1 = full, 0 = streaming) fixes one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kvbench.methods.head_pattern import streaming_heads


def check_sparsity(sparsity, what: str = "export head sparsity") -> None:
    """A share of streaming heads to train for or export: 1 would leave no full-attention head anywhere."""
    if not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"{what} must be in [0, 1); got {sparsity!r} (1 would leave no full-attention head)")


def binary_pattern(scores: torch.Tensor, sparsity: float, min_full_per_layer: int = 0) -> torch.Tensor:
    """1.0 for the heads kept full (the highest scores), 0.0 for the round(sparsity x heads) streaming ones.

    `min_full_per_layer` forbids layers with fewer full heads than that: such an export is an error rather
    than a silently different sparsity.
    """
    check_sparsity(sparsity)
    if not isinstance(min_full_per_layer, int) or not 0 <= min_full_per_layer <= scores.shape[1]:
        raise ValueError(
            f"min_full_per_layer must be an integer in [0, {scores.shape[1]}] (the KV heads per layer); "
            f"got {min_full_per_layer!r}"
        )
    full = ~streaming_heads(scores, sparsity)
    starved = [(layer, int(n)) for layer, n in enumerate(full.sum(dim=1).tolist()) if n < min_full_per_layer]
    if starved:
        listed = ", ".join(f"layer {layer} ({n})" for layer, n in starved)
        raise ValueError(
            f"at head sparsity {sparsity}, these layers keep fewer than {min_full_per_layer} full heads: {listed}"
            "; lower the sparsity or the minimum"
        )
    return full.to(torch.float64)


def write_table(table: torch.Tensor, path, precision: int = 6) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["\t".join(f"{float(x):.{precision}g}" for x in row) for row in table.tolist()]
    path.write_text("\n".join(rows) + "\n")
    return path
