"""The allocator's own peak per GPU, per request: what the KV ledger's figures sit inside of.

`MEMORY` is what the engine asks: `reset(gpus)` when a request starts and `peak(gpus)` when it ends, for every GPU the
model's weights are on (a model split over several has a peak on each). torch.cuda's statistics by default; a test
puts a stand-in with the same two methods in its place, so the per-request bookkeeping is tested without a GPU.
"""

from __future__ import annotations

import torch


def model_gpus(model) -> list[torch.device]:
    """The CUDA devices holding the model's parameters, in order (none on a CPU)."""
    found: dict[str, torch.device] = {}
    for parameter in model.parameters():
        if parameter.device.type == "cuda":
            found.setdefault(str(parameter.device), parameter.device)
    return list(found.values())


class CudaMemoryStats:
    def reset(self, gpus: list[torch.device]) -> None:
        for gpu in gpus:
            torch.cuda.reset_peak_memory_stats(gpu)

    def peak(self, gpus: list[torch.device]) -> dict[str, int]:
        return {str(gpu): int(torch.cuda.max_memory_allocated(gpu)) for gpu in gpus}


MEMORY = CudaMemoryStats()
