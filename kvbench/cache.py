"""KVCache: a transformers Cache whose layers hold KV entries in head groups, physically evicted (by a Step).

Each layer's KV heads are split into groups (one by default; DuoAttention/PruLong use a full and a
streaming group). A group is one dense tensor per K and V, so heads of a group hold the same number
of entries, but each head may hold different positions. Eviction gathers the kept entries into
new tensors: the rest is freed, not masked.

The cache also tracks the logical length (tokens seen), which after eviction differs from the
number of entries held; `get_seq_length()` reports the logical one, as position ids need.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kvbench.ledger import Ledger
from kvbench.method import Method, ModelShape
from kvbench.quant import bytes_per_entry, make_store


class HeadGroup:
    """Some KV heads of one layer, stored together: keys/values [1, h, n, d], positions [h, n]."""

    def __init__(self, heads: list[int], queries_per_head: int, kv_bits: int = 16):
        self.heads = heads
        # The query heads attending over this group, in the model's order (GQA: r per KV head).
        self.query_heads = [h * queries_per_head + r for h in heads for r in range(queries_per_head)]
        self.kv_bits = kv_bits
        self._keys = self._values = None  # stores (kvbench.quant): the model's dtype, or 8/4-bit codes
        self.positions: torch.Tensor | None = None
        # ThinK: the key channels each head keeps [h, d'], ascending; the others are not stored (None: all of them).
        self.key_channels: torch.Tensor | None = None
        self.head_dim = 0

    @property
    def keys(self) -> torch.Tensor:
        """[1, h, n, d]; with pruned key channels, a copy with zeros in the pruned ones (attention kernels want one
        head size for queries, keys and values; a zero channel adds nothing to a query's dot product)."""
        keys = self._keys.read()
        if self.key_channels is None:
            return keys
        index = self.key_channels[None, :, None, :].expand(1, -1, keys.shape[2], -1)
        return keys.new_zeros(*keys.shape[:3], self.head_dim).scatter_(-1, index, keys)

    def entry_bytes(self, dtype: torch.dtype) -> int:
        """Bytes one entry of one head takes here (its key and its value)."""
        if self.key_channels is None:
            return bytes_per_entry(self.head_dim, dtype, self.kv_bits)
        return (self.key_channels.shape[1] + self.head_dim) * dtype.itemsize

    def keep_key_channels(self, channels: torch.Tensor) -> None:
        """Keep key channels `channels` [h, d'] (ascending) of every held and future entry; the rest is freed."""
        if self.key_channels is not None or self.kv_bits != 16:
            raise ValueError("key channels are pruned once, from 16-bit keys")
        keys = self._keys.read()
        self._keys = make_store(keys.gather(-1, channels[None, :, None, :].expand(1, -1, keys.shape[2], -1)), 16)
        self.key_channels = channels

    @property
    def values(self) -> torch.Tensor:
        return self._values.read()

    @property
    def num_held(self) -> int:
        return 0 if self.positions is None else self.positions.shape[-1]

    @property
    def nbytes(self) -> int:
        return 0 if self._keys is None else self._keys.nbytes + self._values.nbytes

    def append(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> None:
        # On the layer's own device, with its keys (a model split across GPUs keeps each layer's cache there).
        positions = positions.to(keys.device).expand(len(self.heads), -1)
        self.head_dim = keys.shape[-1]
        if self.key_channels is not None:
            keys = keys.gather(-1, self.key_channels[None, :, None, :].expand(1, -1, keys.shape[2], -1))
        if self._keys is None:
            # Own copies, so that the group never keeps the whole layer's projection alive.
            self._keys, self._values = make_store(keys, self.kv_bits), make_store(values, self.kv_bits)
            self.positions = positions.clone()
            return
        self._keys.cat(keys)
        self._values.cat(values)
        self.positions = torch.cat([self.positions, positions], dim=1)

    def keep(self, index: torch.Tensor) -> None:
        """Keep entries `index` [h, k] of each head; the rest is freed (new, smaller tensors)."""
        self._keys.gather(index)
        self._values.gather(index)
        self.positions = torch.gather(self.positions, 1, index)


class HeadGroupLayer(CacheLayerMixin):
    """One model layer of a KVCache: its head groups and the tokens it has seen."""

    is_sliding = False
    supports_early_init = False

    def __init__(self, groups: list[HeadGroup]):
        super().__init__()
        self.groups = groups
        self.tokens_seen = 0
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        raise NotImplementedError("KVCache.update appends to head groups; layers are not updated alone")

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.tokens_seen + query_length, 0

    def get_seq_length(self) -> int:
        return self.tokens_seen

    def get_max_length(self) -> int:
        return -1

    @property
    def num_held(self) -> int:
        return sum(g.num_held * len(g.heads) for g in self.groups)


class KVCache(Cache):
    """The entries one request holds: per layer, its head groups and the tokens it has seen; `method` decides what
    they keep and `ledger` accounts for them (both the request's: a copy of the cache is a copy of the request).
    A forward step's own state (its phase, positions, scoring tail, kernel) is its `Step` (kvbench/step.py), which
    appends, attends and evicts; transformers' `update` hands the step's keys and values through untouched."""

    def __init__(self, shape: ModelShape, method: Method, ledger: Ledger | None = None):
        self.shape = shape
        self.method = method
        self.ledger = ledger if ledger is not None else Ledger(shape.num_layers, shape.num_kv_heads)
        per_head = shape.num_query_heads // shape.num_kv_heads
        layers = [
            HeadGroupLayer(
                [HeadGroup(heads, per_head, method.kv_bits) for heads in _checked_groups(method, layer, shape)]
            )
            for layer in range(shape.num_layers)
        ]
        super().__init__(layers=layers)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """transformers calls this before attention; the Step appends in the attention function instead, so that
        one object feeds the ledger. The step's own keys and values pass through."""
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].tokens_seen

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return self.layers[layer_idx].get_mask_sizes(query_length)

    @property
    def num_held(self) -> int:
        """KV entries held now, over all layers and KV heads."""
        return sum(layer.num_held for layer in self.layers)

    @property
    def nbytes(self) -> int:
        """Physical bytes of the K and V tensors held now."""
        return sum(g.nbytes for layer in self.layers for g in layer.groups)


def _checked_groups(method: Method, layer: int, shape: ModelShape) -> list[list[int]]:
    groups = method.head_groups(layer, shape)
    flat = sorted(h for g in groups for h in g)
    if flat != list(range(shape.num_kv_heads)) or any(len(g) == 0 for g in groups):
        raise ValueError(
            f"method {method.name!r}: head_groups({layer}) must split KV heads 0..{shape.num_kv_heads - 1} "
            f"into non-empty groups, each head once; got {groups}"
        )
    return groups
