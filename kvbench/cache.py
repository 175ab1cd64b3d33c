"""KVCache: a transformers Cache whose layers hold KV entries in head groups, physically evicted.

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
from kvbench.method import KeepView, Method, ModelShape, Phase


class HeadGroup:
    """Some KV heads of one layer, stored together: keys/values [1, h, n, d], positions [h, n]."""

    def __init__(self, heads: list[int], queries_per_head: int):
        self.heads = heads
        # The query heads attending over this group, in the model's order (GQA: r per KV head).
        self.query_heads = [h * queries_per_head + r for h in heads for r in range(queries_per_head)]
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    @property
    def num_held(self) -> int:
        return 0 if self.positions is None else self.positions.shape[-1]

    @property
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return self.keys.untyped_storage().nbytes() + self.values.untyped_storage().nbytes()

    def append(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> None:
        positions = positions.expand(len(self.heads), -1)
        if self.keys is None:
            # Own copies, so that the group never keeps the whole layer's projection alive.
            self.keys, self.values, self.positions = keys.contiguous(), values.contiguous(), positions.clone()
            return
        self.keys = torch.cat([self.keys, keys], dim=2)
        self.values = torch.cat([self.values, values], dim=2)
        self.positions = torch.cat([self.positions, positions], dim=1)

    def keep(self, index: torch.Tensor) -> None:
        """Keep entries `index` [h, k] of each head; the rest is freed (new, smaller tensors)."""
        gather = index[None, :, :, None].expand(1, -1, -1, self.keys.shape[-1])
        self.keys = torch.gather(self.keys, 2, gather)
        self.values = torch.gather(self.values, 2, gather)
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
    """The cache one request runs with; `method` decides, the cache evicts, `ledger` accounts."""

    def __init__(self, shape: ModelShape, method: Method, ledger: Ledger | None = None, attn_kernel: str = "sdpa"):
        self.shape = shape
        self.attn_kernel = attn_kernel
        self.method = method
        self.ledger = ledger if ledger is not None else Ledger(shape.num_layers, shape.num_kv_heads)
        per_head = shape.num_query_heads // shape.num_kv_heads
        layers = [
            HeadGroupLayer([HeadGroup(heads, per_head) for heads in _checked_groups(method, layer, shape)])
            for layer in range(shape.num_layers)
        ]
        super().__init__(layers=layers)
        self.phase = Phase(is_decode=False)
        self.positions: torch.Tensor | None = None  # of the step being run, [c]

    def begin_step(self, phase: Phase, positions: torch.Tensor) -> None:
        """Called by the engine before each forward: what the step is and its tokens' true positions."""
        self.phase = phase
        self.positions = positions

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Append the step's K,V [1, kv_heads, c, d] to each head group; return them unchanged.

        The attention function reads the held entries from the groups, not from what this returns.
        """
        if key_states.shape[0] != 1:
            raise ValueError(f"kvbench runs one sequence at a time; got a batch of {key_states.shape[0]}")
        layer = self.layers[layer_idx]
        new = key_states.shape[2]
        bytes_before, held_before = sum(g.nbytes for g in layer.groups), layer.num_held
        for group in layer.groups:
            self.ledger.record_step(layer_idx, group.heads, held_before=group.num_held, new=new)
            heads = _head_index(group.heads, key_states)
            group.append(key_states[:, heads], value_states[:, heads], self.positions)
        layer.tokens_seen += new
        self.ledger.record_memory(sum(g.nbytes for g in layer.groups) - bytes_before, layer.num_held - held_before)
        return key_states, value_states

    def evict(self, layer_idx: int, queries: torch.Tensor, scaling: float) -> None:
        """After attention at layer `layer_idx`: ask the method what each group keeps, and free the rest."""
        layer = self.layers[layer_idx]
        per_head = self.shape.num_query_heads // self.shape.num_kv_heads
        for group_index, group in enumerate(layer.groups):
            group_queries = queries[0, group.query_heads] if len(layer.groups) > 1 else queries[0]
            view = KeepView(
                layer=layer_idx,
                group=group_index,
                heads=group.heads,
                phase=self.phase,
                positions=group.positions,
                keys=group.keys[0],
                values=group.values[0],
                queries=group_queries.unflatten(0, (len(group.heads), per_head)),
                num_new=self.positions.shape[0],
                scaling=scaling,
            )
            index = self.method.select(view)
            if index is None:
                continue
            _check_keep_index(index, group, self.method, layer_idx, group_index)
            bytes_before, held_before = group.nbytes, group.num_held
            group.keep(index.to(device=group.positions.device, dtype=torch.int64))
            self.ledger.record_memory(
                group.nbytes - bytes_before, (group.num_held - held_before) * len(group.heads)
            )

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


def _head_index(heads: list[int], states: torch.Tensor) -> slice | torch.Tensor:
    if heads == list(range(states.shape[1])):
        return slice(None)  # the whole layer in one group: no copy
    return torch.tensor(heads, device=states.device)


def _check_keep_index(index: torch.Tensor, group: HeadGroup, method: Method, layer: int, group_index: int):
    where = f"method {method.name!r} at layer {layer}, group {group_index}"
    if index.dtype not in (torch.int64, torch.int32) or index.dim() != 2 or index.shape[0] != len(group.heads):
        raise ValueError(
            f"{where}: select() must return integer indices of shape [{len(group.heads)}, k]; "
            f"got {tuple(index.shape)} {index.dtype}"
        )
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= group.num_held):
        raise ValueError(
            f"{where}: select() returned indices outside 0..{group.num_held - 1} "
            f"(min {int(index.min())}, max {int(index.max())})"
        )
    if index.shape[1] > 1 and not bool((index[:, 1:] > index[:, :-1]).all()):
        raise ValueError(f"{where}: select() must return each head's indices ascending, without repeats")
