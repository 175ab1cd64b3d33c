"""The method contract: what a KV eviction method implements.

A method only *decides*. The framework (cache, attention, ledger) stores the KVs, runs attention,
gathers the entries a method keeps and accounts for them, so a method cannot report a footprint
it did not have. See DESIGN.md, "The method contract".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True)
class ModelShape:
    """The facts about a model that a method may check itself against in `bind`."""

    num_layers: int
    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int | None = None

    @classmethod
    def from_config(cls, config) -> ModelShape:
        heads = config.num_attention_heads
        return cls(
            num_layers=config.num_hidden_layers,
            num_query_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            max_positions=getattr(config, "max_position_embeddings", None),
        )


@dataclass(frozen=True)
class Phase:
    """Where in a request a forward step is: a prefill chunk, or a decode step."""

    is_decode: bool
    chunk_index: int = 0  # prefill: this chunk's index; decode: the decode step's index
    num_chunks: int = 1  # prefill chunks of the prompt

    @property
    def is_last_chunk(self) -> bool:
        return not self.is_decode and self.chunk_index == self.num_chunks - 1


@dataclass
class KeepView:
    """What a method sees of one head group after attention at one step.

    Shapes use h = KV heads of the group, n = entries held (the step's new ones included, last),
    c = the step's new tokens, r = query heads per KV head, d = head dimension.
    """

    layer: int
    group: int
    heads: list[int]  # the model's KV head indices held by this group
    phase: Phase
    positions: torch.Tensor  # [h, n] original token positions of the held entries, ascending
    keys: torch.Tensor  # [h, n, d] post-RoPE keys
    values: torch.Tensor  # [h, n, d]
    queries: torch.Tensor  # [h, r, c, d] the step's post-RoPE queries, grouped by KV head
    num_new: int  # c: the last c held entries were added at this step
    scaling: float

    @property
    def num_held(self) -> int:
        return self.positions.shape[-1]

    def keep_ranges(self, *ranges: range) -> torch.Tensor:
        """The same held indices (union of ranges, ascending) for every head of the group: [h, k]."""
        index = torch.cat([torch.arange(r.start, r.stop, device=self.positions.device) for r in ranges])
        return index.unique(sorted=True).expand(len(self.heads), -1)


@dataclass
class Method:
    """Base class of every KV eviction method.

    Subclasses are dataclasses whose fields are the user parameters; they set `name`, `category`
    and, for sweeps, `knob` (the parameter that trades memory for quality) and `knob_increases`
    (True when a larger knob keeps more entries).
    """

    name: ClassVar[str] = ""
    category: ClassVar[str] = ""
    description: ClassVar[str] = ""
    knob: ClassVar[str | None] = None
    knob_increases: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming a bad parameter and its valid range."""

    def bind(self, shape: ModelShape) -> None:
        """Check the method against the model once, before a request (e.g. a head pattern's shape)."""

    def head_groups(self, layer: int, shape: ModelShape) -> list[list[int]]:
        """Split the layer's KV heads into groups stored separately (default: one group)."""
        return [list(range(shape.num_kv_heads))]

    def keep(self, view: KeepView) -> torch.Tensor | None:
        """Indices into the held entries that each head keeps, [h, k] ascending; None keeps all."""
        return None

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def require(condition: bool, message: str) -> None:
    """Parameter validation that reads as the rule it enforces."""
    if not condition:
        raise ValueError(message)
