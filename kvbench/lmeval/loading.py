"""The model a kvbench lm-eval run evaluates, loaded and placed; and the processes that share its requests.

As lm-eval's `hf` backend: one model copy per process under `accelerate launch` or `torchrun` (each on its share of
the requests), or one model split over the visible GPUs (`parallelize=True`, `device_map=`), each layer's KV cache
then on its layer's device.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import transformers

from kvbench.settings import parse_bool, parse_dtype
from kvbench.tiny import resolve_pretrained

log = logging.getLogger("lm_eval.models.kvbench")


def pick_device(device: str | None) -> torch.device:
    if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        if device is not None:  # lm-eval passes "cuda" unless told otherwise: no news on a CPU machine
            log.info(f"device {device!r}: CUDA is not available here; using the CPU")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def placement(parallelize, device_map, max_memory_per_gpu, max_cpu_memory) -> dict:
    """from_pretrained's placement arguments for one model split across devices (lm-eval's hf backend's names):
    `parallelize=True` spreads the layers over the visible GPUs (device_map "auto", at most `max_memory_per_gpu`
    each); `device_map=` places them as given. Each layer's KV cache then lives on its layer's device."""
    if not parse_bool(parallelize, "parallelize") and device_map is None:
        return {}
    arguments = {"device_map": device_map or "auto"}
    if max_memory_per_gpu is not None or max_cpu_memory is not None:
        memory = {i: max_memory_per_gpu for i in range(torch.cuda.device_count())} if max_memory_per_gpu else {}
        if max_cpu_memory is not None:
            memory["cpu"] = max_cpu_memory
        arguments["max_memory"] = memory
    return arguments


def load(pretrained: str, dtype, trust_remote_code: bool, arguments: dict, device: torch.device):
    """(model in eval mode on `device` or placed by `arguments`, tokenizer); a path, a hub name, or kvbench-tiny.
    What cannot be loaded is a one-line error saying what to do."""
    path = resolve_pretrained(pretrained)  # "kvbench-tiny" is the bundled checkpoint
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"pretrained={pretrained}: the folder holds no model (no config.json); point "
            "pretrained= at a checkpoint folder (config.json, weights, tokenizer) or a hub name"
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=parse_dtype(dtype), trust_remote_code=trust_remote_code, **arguments
        ).eval()
    except OSError as error:  # transformers' "not a local folder, and not on the Hub" (after its retries)
        reason = str(error).strip().splitlines()[0]
        raise ValueError(
            f"pretrained={pretrained}: cannot load it ({reason}); point pretrained= at a local "
            "checkpoint folder, or check the hub name and your connection"
        ) from None
    if not arguments:
        model.to(device)
    return model, tokenizer


class Processes:
    """This process among those sharing the requests: under `accelerate launch` or `torchrun`, its rank and the
    world size (lm-eval splits the requests by them) and this process's device; alone, rank 0 of 1. Without CUDA
    (or with device=cpu) the processes talk over gloo."""

    def __init__(self, device: torch.device):
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=device.type == "cpu")
        self.accelerator = accelerator if accelerator.num_processes > 1 else None
        # The global index: on several machines, local indices would repeat and the same requests run twice.
        self.rank = accelerator.process_index if self.accelerator else 0
        self.world_size = accelerator.num_processes if self.accelerator else 1
        self.device = accelerator.device if self.accelerator else device

    def all_gather(self, tensor):
        return tensor if self.world_size == 1 else self.accelerator.gather(tensor)

    def gather_object(self, obj, dst: int = 0):
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()
