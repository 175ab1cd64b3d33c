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

    @property
    def keys(self) -> torch.Tensor:
        return self._keys.read()

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
    """The cache one request runs with; `method` decides, the cache evicts, `ledger` accounts."""

    def __init__(self, shape: ModelShape, method: Method, ledger: Ledger | None = None, attn_kernel: str = "sdpa"):
        self.shape = shape
        self.attn_kernel = attn_kernel
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
        self.phase = Phase(is_decode=False)
        self.positions: torch.Tensor | None = None  # of the step being run, [c + scoring]
        self.scoring = 0  # the step's last tokens that only score (patched schedule), dropped after

    def begin_step(self, phase: Phase, positions: torch.Tensor, scoring: int = 0) -> None:
        """Called by the engine before each forward: what the step is and its tokens' true positions.

        The last `scoring` tokens are the prompt's last ones appended for scoring (patched schedule):
        they are attended over in this step only, then dropped, and count in no footprint.
        """
        self.phase = phase
        self.positions = positions
        self.scoring = scoring

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Append the step's K,V [1, kv_heads, c, d] to each head group; return them unchanged.

        The attention function reads the held entries from the groups, not from what this returns.
        """
        if key_states.shape[0] != 1:
            raise ValueError(f"kvbench runs one sequence at a time; got a batch of {key_states.shape[0]}")
        layer = self.layers[layer_idx]
        new = key_states.shape[2] - self.scoring
        weight = self._byte_weight(key_states)
        self.entry_bytes = bytes_per_entry(key_states.shape[-1], key_states.dtype, self.method.kv_bits)
        bytes_before, held_before = sum(g.nbytes for g in layer.groups), layer.num_held
        for group in layer.groups:
            self.ledger.record_step(layer_idx, group.heads, held_before=group.num_held, new=new, weight=weight)
            heads = _head_index(group.heads, key_states)
            group.append(key_states[:, heads], value_states[:, heads], self.positions)
        layer.tokens_seen += new
        # The scoring tail is held only while the method scores, then dropped: like kv_peak, the physical
        # figures leave it out (its queries and keys could be computed without caching them at all).
        tail = self.scoring * self.shape.num_kv_heads
        self.ledger.record_memory(sum(g.nbytes for g in layer.groups) - bytes_before - tail * self.entry_bytes,
                                  layer.num_held - held_before - tail)
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
                num_new=self.positions.shape[0] - self.scoring,
                num_scoring=self.scoring,
                scaling=scaling,
            )
            index = self.method.select(view)
            if index is not None:
                _check_keep_index(index, group, self.method, layer_idx, group_index)
                index = index.to(device=group.positions.device, dtype=torch.int64)
            if self.scoring:
                index = _without_scoring_tail(index, group, self.scoring, self.method, layer_idx, group_index)
            if index is None:
                continue
            bytes_before, held_before = group.nbytes, group.num_held
            group.keep(index)
            tail = self.scoring * len(group.heads)  # dropped here, never recorded as held (see update)
            self.ledger.record_memory(
                group.nbytes - bytes_before + tail * self.entry_bytes,
                (group.num_held - held_before) * len(group.heads) + tail,
            )

    def _byte_weight(self, key_states: torch.Tensor) -> float:
        """Bytes of a stored entry relative to the model's dtype: the footprint counts by bytes."""
        head_dim, dtype, bits = key_states.shape[-1], key_states.dtype, self.method.kv_bits
        return bytes_per_entry(head_dim, dtype, bits) / bytes_per_entry(head_dim, dtype, 16)

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


def _without_scoring_tail(index, group: HeadGroup, scoring: int, method: Method, layer: int, group_index: int):
    """The kept indices less the scoring-only tail (the held entries' last `scoring`)."""
    held = group.num_held
    if index is None:
        return torch.arange(held - scoring, device=group.positions.device).expand(len(group.heads), -1)
    tail = torch.arange(held - scoring, held, device=index.device)
    if index.shape[1] < scoring or not bool((index[:, -scoring:] == tail).all()):
        raise ValueError(
            f"method {method.name!r} at layer {layer}, group {group_index}: select() must keep the last "
            f"{scoring} held entries (the scoring-only tail of the patched schedule), which the cache then drops"
        )
    return index[:, :-scoring]


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
