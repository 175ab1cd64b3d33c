"""ChunkKV (Liu et al., 2025, arXiv 2502.00299): entries kept or dropped in whole chunks of `chunk_length`
consecutive tokens, so that a kept phrase keeps its neighbours, over any score method (`scorer=snapkv` by default).

The competing entries are cut into chunks from their first; a chunk's score is the mean over its entries of the
scores summed over the layer's KV heads, and every head of the layer keeps the same chunks. Chunks that reach into the
always-kept recent window are kept; then the best-scored chunks while the entries kept by score stay within the
budget (k, as for every score method; at least one chunk when k >= 1). The reference (kvpress's ChunkKVPress) counts
its chunks as int(chunks x (1 - compression ratio)) with the window among them by its top score, which comes to the
same count when the budget is a whole number of chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvbench.method import KeepView, require
from kvbench.methods.scorer_wrapper import ScorerWrapper


@dataclass
class ChunkKV(ScorerWrapper):
    chunk_length: int = 20

    name = "chunkkv"
    description = "Keeps or drops whole chunks of consecutive tokens, ranked by a scorer summed over heads (ChunkKV)."

    def validate(self) -> None:
        super().validate()
        require(
            isinstance(self.chunk_length, int) and self.chunk_length >= 1,
            f"chunk_length must be an integer >= 1; got {self.chunk_length!r}",
        )

    def select(self, view: KeepView) -> torch.Tensor | None:
        plan = self.eviction_plan(view)
        if plan is None:
            return None
        candidates, k = plan
        view.candidates = candidates
        scores = self.checked_scores(view)[:, candidates.start : candidates.stop].float().sum(dim=0)  # over heads
        length, size, device = len(candidates), self.chunk_length, scores.device
        chunk_of = torch.arange(length, device=device) // size  # each competing entry's chunk
        chunks = -(-length // size)
        counts = torch.bincount(chunk_of, minlength=chunks)  # the last chunk may be partial
        means = torch.zeros(chunks, device=device).index_add_(0, chunk_of, scores) / counts
        window_start = length - min(self.recent, length)
        in_window = torch.arange(chunks, device=device) * size + counts > window_start  # reach into it: kept
        # The best chunks outside the window, taken in order while they fit in the budget (at least one when k >= 1
        # and nothing else is kept).
        room = k + (length - window_start) - counts[in_window].sum()
        order = means.masked_fill(in_window, float("-inf")).argsort(descending=True)
        outside = ~in_window[order]
        fits = outside & (torch.cumsum(counts[order] * outside, dim=0) <= room)
        if k >= 1 and self.recent == 0:
            fits[0] = True
        kept_chunks = in_window.clone()
        kept_chunks[order] |= fits
        kept = torch.cat(
            [
                torch.arange(0, candidates.start, device=device),
                kept_chunks[chunk_of].nonzero().flatten() + candidates.start,
                torch.arange(candidates.stop, view.num_held, device=device),
            ]
        )
        return kept.to(view.positions.device).expand(len(view.heads), -1)
