"""One forward step of a request (a prefill chunk, a question, a decode step): what happens at each layer.

The engine makes a Step before each forward and hands it to the model beside the cache; the attention function
registered with transformers calls `Step.layer` once per layer, which appends the layer's new keys and values to its
head groups, attends the step's queries over what is held (kvbench.attention.attend, the one code path), and asks
the method what each group keeps, gathering it into new tensors. `finish` ends the step. The ledger is fed here and
nowhere else; the cache only holds entries.

No host synchronisation per layer or eviction: the checks of a method's decisions run on the device, their verdicts
are read once, in `finish` (an index outside what is held is clamped for the gather and refused there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvbench import attention
from kvbench.cache import HeadGroup, KVCache
from kvbench.method import KeepView, Method, Phase
from kvbench.quant import bytes_per_entry


class Step:
    def __init__(
        self,
        cache: KVCache,
        phase: Phase,
        runs: list[tuple[int, int]],
        device,
        kernel: attention.Kernel,
        scoring: int = 0,
    ):
        """`runs`: (first position, count) of each run of consecutive positions among the step's tokens, in order
        (a patched chunk is its own run then the scoring tail's); the last `scoring` tokens only score (patched
        schedule): attended over in this step, then dropped, counted in no footprint."""
        self.cache, self.phase, self.runs, self.kernel, self.scoring = cache, phase, runs, kernel, scoring
        self.positions = torch.cat([torch.arange(first, first + count, device=device) for first, count in runs])
        self.last_position = max(first + count - 1 for first, count in runs)
        self.physical = cache.nbytes  # every K/V byte alive, the scoring tail included (for the transient peak)
        self._verdicts: list[tuple] = []  # device-side checks of this step's decisions, read in finish()

    # ---- one layer ----

    def layer(self, layer_idx: int, query, key, value, scaling: float, window: int | None) -> torch.Tensor:
        """Append the step's keys/values [1, Hkv, c, d], attend the queries [1, Hq, c, d], evict; return the output."""
        if key.shape[0] != 1:
            raise ValueError(f"kvbench runs one sequence at a time; got a batch of {key.shape[0]}")
        self._append(layer_idx, key, value)
        layer = self.cache.layers[layer_idx]
        if len(layer.groups) == 1:
            output = self._attend(query, layer.groups[0], scaling, window)
        else:
            output = torch.empty_like(query)
            for group in layer.groups:
                heads = torch.tensor(group.query_heads, device=query.device)
                output[:, heads] = self._attend(query[:, heads], group, scaling, window)
        self._evict(layer_idx, query, scaling)
        return output

    def _append(self, layer_idx: int, key, value) -> None:
        ledger, layer, method = self.cache.ledger, self.cache.layers[layer_idx], self.cache.method
        new = key.shape[2] - self.scoring
        head_dim, dtype = key.shape[-1], key.dtype
        self.entry_bytes = bytes_per_entry(head_dim, dtype, method.kv_bits)
        self.bytes16 = bytes_per_entry(head_dim, dtype, 16)  # an entry read back at the model's dtype
        weight = self.entry_bytes / self.bytes16  # the footprint counts bytes
        bytes_before, held_before = sum(g.nbytes for g in layer.groups), layer.num_held
        for group in layer.groups:
            # ThinK: a group whose keys hold fewer channels takes fewer bytes an entry
            share = weight if group.key_channels is None else group.entry_bytes(dtype) / self.bytes16
            if self.phase.is_extra:  # a method's own step: its entries are held (peaks) but it is not the request's
                ledger.record_extra_step(group.heads, held_before=group.num_held, new=new, weight=share)
            else:
                ledger.record_step(layer_idx, group.heads, held_before=group.num_held, new=new, weight=share)
            heads = _head_index(group.heads, key)
            previous = group.nbytes
            group.append(key[:, heads], value[:, heads], self.positions)
            # While the appended tensors are made, the previous ones are still alive (a concatenation's double buffer).
            ledger.record_transient(self.physical + group.nbytes)
            self.physical += group.nbytes - previous
        if not self.phase.is_extra:  # the request's positions go on after the prompt, whatever a method ran
            layer.tokens_seen += new
        # The scoring tail is held only while the method scores, then dropped: like kv_peak, the held figures
        # leave it out (its queries and keys could be computed without caching them at all).
        tail = self.scoring * self.cache.shape.num_kv_heads
        ledger.record_memory(
            sum(g.nbytes for g in layer.groups) - bytes_before - tail * self.entry_bytes,
            layer.num_held - held_before - tail,
        )

    def _attend(self, query, group: HeadGroup, scaling: float, window: int | None):
        keys, values = group.keys, group.values
        if group.kv_bits != 16 or group.key_channels is not None:
            # read through dequantized (or zero-filled) copies, alive while the layer attends and decides
            self.cache.ledger.record_transient(self.physical + keys.nbytes + values.nbytes)
        if window is not None and self.last_position >= window:  # the window may cut into what is held
            return attention.attend_windowed(
                query, keys, values, group.positions, self.runs, window, scaling, self.kernel
            )
        return attention.attend(query, keys, values, scaling, self.kernel)

    def _evict(self, layer_idx: int, queries, scaling: float) -> None:
        """After attention at `layer_idx`: ask the method what each group keeps (all the layer's groups in one call,
        so that a budget shared by the layer's heads can be split among them), and free the rest."""
        layer, method, ledger = self.cache.layers[layer_idx], self.cache.method, self.cache.ledger
        views = _LayerViews(self, layer_idx, queries, scaling)
        if type(method).select_layer is not Method.select_layer and any(g.kv_bits != 16 for g in layer.groups):
            # A method deciding for the whole layer at once reads every group through its dequantized copy together.
            ledger.record_transient(self.physical + sum(g.num_held * len(g.heads) for g in layer.groups) * self.bytes16)
        answers = method.select_layer(views)
        if not isinstance(answers, (list, tuple)) or len(answers) != len(views):
            raise ValueError(
                f"{self._where(layer_idx, 0)}: select_layer() must return one answer per head group "
                f"({len(views)}); got {answers!r:.80}"
            )
        self._apply(layer_idx, answers, self.scoring)
        if type(method).select_key_channels is not Method.select_key_channels:
            for group, view in zip(layer.groups, views):  # views made now: after the entries' eviction
                channels = method.select_key_channels(view)
                if channels is not None:
                    self._prune_key_channels(group, channels, layer_idx, view.group)

    def _prune_key_channels(self, group: HeadGroup, channels: torch.Tensor, layer: int, group_index: int) -> None:
        head_dim = group.head_dim
        if channels.dim() != 2 or channels.shape[0] != len(group.heads) or not 0 < channels.shape[1] <= head_dim:
            raise ValueError(
                f"{self._where(layer, group_index)}: select_key_channels() must return [{len(group.heads)}, k] "
                f"channel indices, 0 < k <= {head_dim}; got {tuple(channels.shape)}"
            )
        bytes_before = group.nbytes
        group.keep_key_channels(channels.to(group.positions.device, torch.int64))
        self.cache.ledger.record_transient(self.physical + group.nbytes)  # the pruned copy beside the old keys
        self.physical += group.nbytes - bytes_before
        self.cache.ledger.record_memory(group.nbytes - bytes_before, 0)

    def _apply(self, layer_idx: int, answers, scoring: int) -> None:
        """Keep what the method chose in each group of the layer (the scoring tail, if any, dropped) and free the rest."""
        layer, ledger = self.cache.layers[layer_idx], self.cache.ledger
        for group_index, (group, index) in enumerate(zip(layer.groups, answers)):
            if index is not None:
                index = self._checked(index, group, layer_idx, group_index)
            if scoring:
                index = self._without_scoring_tail(index, group, layer_idx, group_index)
            if index is None:
                continue
            bytes_before, held_before = group.nbytes, group.num_held
            group.keep(index)
            # The kept entries were gathered into new tensors while the old ones were still alive.
            ledger.record_transient(self.physical + group.nbytes)
            self.physical += group.nbytes - bytes_before
            tail = scoring * len(group.heads)  # dropped here, never recorded as held (see _append)
            ledger.record_memory(
                group.nbytes - bytes_before + tail * self.entry_bytes,
                (group.num_held - held_before) * len(group.heads) + tail,
            )

    # ---- the method's decisions, checked on the device ----

    def _where(self, layer: int, group: int) -> str:
        return f"method {self.cache.method.name!r} at layer {layer}, group {group}"

    def _checked(self, index: torch.Tensor, group: HeadGroup, layer: int, group_index: int) -> torch.Tensor:
        """The shape is checked now (host metadata); the values on the device, read in finish(). An index outside
        what is held is clamped meanwhile, so that the gather never faults."""
        where = self._where(layer, group_index)
        if index.dtype not in (torch.int64, torch.int32) or index.dim() != 2 or index.shape[0] != len(group.heads):
            raise ValueError(
                f"{where}: select() must return integer indices of shape [{len(group.heads)}, k]; "
                f"got {tuple(index.shape)} {index.dtype}"
            )
        index = index.to(device=group.positions.device, dtype=torch.int64)
        if index.numel() == 0:
            return index
        held = group.num_held
        low, high = index.min(), index.max()
        self._verdicts.append(
            (
                (low >= 0) & (high < held),
                lambda low=low, high=high, held=held: (
                    f"{where}: select() returned indices outside 0..{held - 1} (min {int(low)}, max {int(high)})"
                ),
            )
        )
        if index.shape[1] > 1:
            self._verdicts.append(
                (
                    (index[:, 1:] > index[:, :-1]).all(),
                    lambda: f"{where}: select() must return each head's indices ascending, without repeats",
                )
            )
        return index.clamp(0, held - 1)

    def _without_scoring_tail(self, index, group: HeadGroup, layer: int, group_index: int):
        """The kept indices less the scoring-only tail (the held entries' last `scoring`), which select() must keep."""
        held, scoring = group.num_held, self.scoring
        if index is None:
            return torch.arange(held - scoring, device=group.positions.device).expand(len(group.heads), -1)
        message = (
            f"{self._where(layer, group_index)}: select() must keep the last {scoring} held entries (the "
            "scoring-only tail of the patched schedule), which the cache then drops"
        )
        if index.shape[1] < scoring:
            raise ValueError(message)
        tail = torch.arange(held - scoring, held, device=index.device)
        self._verdicts.append(((index[:, -scoring:] == tail).all(), lambda: message))
        return index[:, :-scoring]

    def finish(self) -> None:
        """End the step: the decisions a method makes across layers are applied, the ledger closes the step, and the
        step's decisions are checked (one read from the device)."""
        decided = self.cache.method.finish_step(self.phase)
        for layer_idx, answers in sorted(decided.items()):
            groups = self.cache.layers[layer_idx].groups
            if not isinstance(answers, (list, tuple)) or len(answers) != len(groups):
                raise ValueError(
                    f"{self._where(layer_idx, 0)}: finish_step() must give one answer per head group ({len(groups)}) "
                    f"of each layer it decides; got {answers!r:.80}"
                )
            self._apply(layer_idx, answers, scoring=0)  # a scoring tail went at the layer's own eviction
        if self.phase.is_extra:
            self.cache.ledger.extra_tokens += len(self.positions)
        self.cache.ledger.end_step()
        if self._verdicts:
            device = self._verdicts[0][0].device  # layers split over GPUs: their verdicts meet on one device
            verdicts = torch.stack([ok.to(device, non_blocking=True) for ok, _ in self._verdicts]).tolist()
            failed = next((message for passed, (_, message) in zip(verdicts, self._verdicts) if not passed), None)
            self._verdicts = []
            if failed is not None:
                raise ValueError(failed())


class _LayerViews(Sequence[KeepView]):
    """The KeepViews of one layer's head groups, each made when it is read: the default select_layer() asks group
    by group, so a quantized group's dequantized copy is alive only while its own decision is made."""

    def __init__(self, step: Step, layer_idx: int, queries, scaling: float):
        self.step, self.layer_idx, self.queries, self.scaling = step, layer_idx, queries, scaling
        self.groups = step.cache.layers[layer_idx].groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, group_index):
        if isinstance(group_index, slice):
            return [self[i] for i in range(len(self))[group_index]]
        group, shape = self.groups[group_index], self.step.cache.shape
        group_queries = self.queries[0, group.query_heads] if len(self.groups) > 1 else self.queries[0]
        return KeepView(
            layer=self.layer_idx,
            group=range(len(self))[group_index],
            heads=group.heads,
            phase=self.step.phase,
            positions=group.positions,
            keys=group.keys[0],
            values=group.values[0],
            queries=group_queries.unflatten(0, (len(group.heads), shape.num_query_heads // shape.num_kv_heads)),
            num_new=self.step.positions.shape[0] - self.step.scoring,
            num_scoring=self.step.scoring,
            scaling=self.scaling,
        )


def _head_index(heads: list[int], states: torch.Tensor) -> slice | torch.Tensor:
    if heads == list(range(states.shape[1])):
        return slice(None)  # the whole layer in one group: no copy
    return torch.tensor(heads, device=states.device)
