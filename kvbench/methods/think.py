"""ThinK (Xu et al., 2024, arXiv 2407.21018): prune key channels, not entries. After the prompt, each KV head keeps the
`channel_keep` share of its key channels whose product of query and key energy is largest: for channel i,
mean over the last `window_size` queries (and the query heads of the KV head) of q_i^2, times the mean over the held
keys of k_i^2. The other channels of its keys are freed, for the prompt's entries and every later one; values keep
all their channels. Entries are not evicted: a head holds every entry, each in fewer bytes, so ThinK shares the
byte axis with `kv_bits` (the footprint counts bytes).

Attention reads the keys through a copy with zeros in the pruned channels, which adds nothing to a query's dot
product: the scores are those of kvpress's ThinKPress, which zeroes the channels in place and keeps their bytes.

It reads the prompt's last queries: query-aware, the question's; under `query=agnostic`, the context's end. It decides
once, after the prompt's last chunk (its keys held whole until then). Where it differs from kvpress: kvpress zeroes
the prompt's keys only and stores the decode steps' keys whole; kvbench keeps the same channels of every later key
too (one stored width per head), so decoding saves the same share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvbench.method import KeepView, Method, require


@dataclass
class ThinK(Method):
    channel_keep: float = 0.5
    window_size: int = 32

    name = "think"
    category = "channels"
    description = "Keeps the key channels with the most query x key energy per KV head (ThinK); keeps every entry."
    knob = "channel_keep"
    knob_values = (0.25, 0.5, 0.75)
    keeps_everything = {"channel_keep": 1.0}

    def validate(self) -> None:
        require(
            isinstance(self.channel_keep, (int, float)) and 0 < self.channel_keep <= 1,
            f"channel_keep must be in (0, 1]; got {self.channel_keep!r}",
        )
        require(
            isinstance(self.window_size, int) and self.window_size >= 1,
            f"window_size must be an integer >= 1; got {self.window_size!r}",
        )
        require(self.kv_bits == 16, f"think prunes the channels of 16-bit keys: kv_bits must be 16; got {self.kv_bits}")

    def evicts_while_decoding(self) -> bool:
        return False

    def select_key_channels(self, view: KeepView) -> torch.Tensor | None:
        if not view.phase.is_last_chunk:
            return None
        dim = view.keys.shape[-1]
        pruned = int(dim * (1 - self.channel_keep))  # as the reference counts them
        if pruned == 0:
            return None
        queries = view.queries[:, :, -self.window_size :].float()  # [h, r, w, d]
        query_energy = queries.pow(2).mean(dim=2).mean(dim=1)  # [h, d]
        key_energy = view.keys.float().pow(2).mean(dim=1)  # [h, d] over the held entries
        scores = query_energy * key_energy
        return scores.topk(dim - pruned, dim=-1).indices.sort(dim=-1).values
