"""Shared by DuoAttention and PruLong: a per-(layer, KV head) score file decides which heads
keep the full cache and which only attention sinks plus a local window.

Heads are stored in two groups per layer, so streaming heads really hold only `sink + window`
entries. `head_sparsity` (the knob) is the share of heads made streaming: those with the lowest
scores, as DuoAttention's quantile threshold does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kvbench.method import KeepView, Method, ModelShape, require
from kvbench.methods.streamingllm import check_sink_and_window, sinks_and_window
from kvbench.settings import DEFAULT_HEAD_SPARSITY, DEFAULT_SINK, DEFAULT_WINDOW


def read_pattern(path: str | Path) -> torch.Tensor:
    """A [layers, kv_heads] float tensor from a TSV (rows = layers, columns = KV heads), .pt or .npy file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"head pattern file not found: {path}")
    if path.suffix == ".pt":
        values = torch.load(path, map_location="cpu", weights_only=True)
    elif path.suffix == ".npy":
        import numpy

        values = torch.from_numpy(numpy.load(path))
    else:
        rows = [line.replace(",", "\t").split() for line in path.read_text().splitlines() if line.strip()]
        try:
            values = torch.tensor([[float(x) for x in row] for row in rows])
        except ValueError as error:
            raise ValueError(f"head pattern {path}: not a table of numbers ({error})") from None
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.dim() != 2:
        raise ValueError(f"head pattern {path}: expected a [layers, kv_heads] table; got shape {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError(f"head pattern {path} holds NaN or infinite values")
    return values


def streaming_heads(scores: torch.Tensor, head_sparsity: float) -> torch.Tensor:
    """Bool [layers, kv_heads]: the round(head_sparsity * heads) lowest-scored heads (ties: earlier first)."""
    count = round(head_sparsity * scores.numel())
    order = torch.sort(scores.flatten(), stable=True).indices
    streaming = torch.zeros(scores.numel(), dtype=torch.bool)
    streaming[order[:count]] = True
    return streaming.view_as(scores)


@dataclass
class HeadPatternMethod(Method):
    pattern: str | None = None
    head_sparsity: float = DEFAULT_HEAD_SPARSITY
    sink: int = DEFAULT_SINK
    window: int = DEFAULT_WINDOW

    category = "recency"
    knob = "head_sparsity"
    knob_increases = False
    knob_values = (0.1, 0.3, 0.5, 0.7, 0.9)
    keeps_everything = {"head_sparsity": 0.0}

    def validate(self) -> None:
        require(self.pattern is not None, f"{self.name} needs pattern=PATH, a head pattern file")
        require(
            isinstance(self.head_sparsity, (int, float)) and 0 <= self.head_sparsity <= 1,
            f"head_sparsity must be in [0, 1]; got {self.head_sparsity!r}",
        )
        check_sink_and_window(self.sink, self.window)
        from kvbench.tiny import resolve_pattern  # pattern=kvbench-tiny: the patterns trained for the bundled model

        self.scores = self.check_scores(read_pattern(resolve_pattern(self.name, self.pattern)))
        self.streaming = streaming_heads(self.scores, self.head_sparsity)

    def check_scores(self, scores: torch.Tensor) -> torch.Tensor:
        return scores

    def bind(self, shape: ModelShape) -> None:
        expected = (shape.num_layers, shape.num_kv_heads)
        if tuple(self.scores.shape) != expected:
            raise ValueError(
                f"head pattern {self.pattern} has shape {tuple(self.scores.shape)} (layers, KV heads); "
                f"the model has {expected}"
            )

    def head_groups(self, layer: int, shape: ModelShape) -> list[list[int]]:
        full = [h for h in range(shape.num_kv_heads) if not self.streaming[layer, h]]
        streaming = [h for h in range(shape.num_kv_heads) if self.streaming[layer, h]]
        return [group for group in (full, streaming) if group]

    def evicts_while_decoding(self) -> bool:
        return bool(self.streaming.any())  # streaming heads slide their window at every step

    def select(self, view: KeepView):
        if not self.streaming[view.layer, view.heads[0]]:
            return None
        return sinks_and_window(view, self.sink, self.window)
