"""What PruLong and DuoAttention training share: settings, model loading, data, the gated forward pass."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from kvbench.method import ModelShape
from kvbench.methods.streamingllm import check_sink_and_window
from kvbench.settings import DEFAULT_SINK, DEFAULT_WINDOW
from kvbench.training import data
from kvbench.training.mixing import MIXED_ATTENTION, Mix, mixing

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainSettings:
    model: str  # a path, a hub name, or kvbench-tiny
    out: Path
    data: str = "synthetic"  # "synthetic" (the generators) or a .txt / .jsonl file
    tasks: tuple[str, ...] = ("synth_recall",)  # synthetic tasks, taken in turn
    answers: str = "gold"  # synthetic data: supervise the gold answer, or the model's own at full attention ("model")
    seq_len: int = 1024  # tokens per training sequence
    steps: int = 200
    batch_size: int = 4  # sequences per step (per process under accelerate)
    sink: int = DEFAULT_SINK  # streaming heads keep `sink` first tokens ...
    window: int = DEFAULT_WINDOW  # ... and the last `window` tokens; use the same values at inference
    lr: float = 0.1  # the gates' learning rate (Adam; PruLong used 1 over 1,000 steps, DuoAttention 0.02)
    seed: int = 0
    dtype: str = "float32"  # bfloat16 for real models on a GPU
    gradient_checkpointing: bool = False  # recompute layer activations in backward: long sequences on a GPU
    log_every: int = 10

    def check(self) -> None:
        def positive_int(name):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer; got {value!r}")

        for name in ("seq_len", "steps", "batch_size", "log_every"):
            positive_int(name)
        check_sink_and_window(self.sink, self.window)
        if self.answers not in ("gold", "model"):
            raise ValueError(f"answers must be gold or model; got {self.answers!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr!r}")

    def as_json(self) -> str:
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}, indent=2)


def load_model(name: str, dtype: str):
    """(model, tokenizer) with every weight frozen, refusing a model whose attention cannot be mixed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kvbench.attention import require_attention_interface
    from kvbench.tiny import resolve_pretrained

    path = resolve_pretrained(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    require_attention_interface(model, "its heads cannot be mixed between full and streaming attention")
    model.requires_grad_(False)
    return model.eval(), AutoTokenizer.from_pretrained(path)  # eval: no dropout in the frozen model


def training_batches(settings: TrainSettings, model, tokenizer, process_index: int = 0):
    """Each process (accelerate, one per GPU) draws its own sequences: the seed is offset by its index."""
    seed = settings.seed + 1_000_003 * process_index
    if settings.data == "synthetic":
        answer_fn = None
        if settings.answers == "model":
            answer_fn = lambda task, prompt: own_answer(model, tokenizer, task, prompt)
        sequences = data.synthetic_sequences(tokenizer, settings.tasks, settings.seq_len, seed, answer_fn)
    else:
        sequences = data.file_sequences(tokenizer, settings.data, settings.seq_len, seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return data.batches(sequences, settings.batch_size, pad)


def own_answer(model, tokenizer, task: str, prompt: str) -> str:
    """The model's greedy answer with full attention (kvbench's engine, as the tasks are evaluated)."""
    from kvbench.data.synth import GEN_TOKENS
    from kvbench.engine import generate
    from kvbench.methods.full import Full

    return generate(model, prompt, Full(), tokenizer=tokenizer, max_new_tokens=GEN_TOKENS[task], stop=["\n"]).text


def final_hidden(model, ids: torch.Tensor, gates: torch.Tensor, settings: TrainSettings) -> torch.Tensor:
    """The last hidden state (after the final norm) with every head mixed by `gates` [layers, kv_heads]."""
    if model.config._attn_implementation != MIXED_ATTENTION:
        raise RuntimeError("run the gated forward pass inside prulong.mixing.mixing(model, ...)")
    mix = Mix(gates, settings.sink, settings.window)
    return model.base_model(input_ids=ids, use_cache=False, kvbench_mix=mix).last_hidden_state


class Trainer:
    """The loop both objectives share: accelerate, a progress bar, a JSONL log.

    A subclass gives `make_trainable()`: an nn.Module holding the frozen model and what is learned, whose
    forward(ids, loss_mask, step) returns (loss, a dict to log). The whole forward runs through that module
    so that accelerate's DistributedDataParallel wrapper sees it and averages gradients across GPUs.
    """

    name = "head-pattern"

    def __init__(self, settings: TrainSettings):
        settings.check()
        self.settings = settings
        torch.manual_seed(settings.seed)
        self.model, self.tokenizer = load_model(settings.model, settings.dtype)
        self.shape = ModelShape.from_config(self.model.config)
        if settings.gradient_checkpointing:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            # transformers recomputes layers only in training mode; the frozen weights are not trained, and
            # long-context LLMs train without dropout, so train mode changes nothing else.
            self.model.train()
        self.trainable = self.make_trainable()

    def make_trainable(self) -> nn.Module:
        raise NotImplementedError

    def optimizers(self) -> list[torch.optim.Optimizer]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Projections after the optimizer steps (e.g. clamping gates into [0, 1])."""

    def save(self, log: list[dict]) -> dict:
        raise NotImplementedError

    def train(self, progress: bool = True) -> dict:
        from accelerate import Accelerator
        from rich.progress import Progress

        s = self.settings
        accelerator = Accelerator()
        out = Path(s.out)
        out.mkdir(parents=True, exist_ok=True)
        optimizers = self.optimizers()
        wrapped, *optimizers = accelerator.prepare(self.trainable, *optimizers)
        batches = training_batches(s, self.model, self.tokenizer, accelerator.process_index)
        torch.manual_seed(s.seed + accelerator.process_index)  # the gates' noise, too, differs per process
        log, log_path = [], out / "training_log.jsonl"
        if accelerator.is_main_process:
            log_path.write_text("")
        with mixing(self.model, s.sink, s.window), Progress(disable=not progress, transient=True) as bar:
            job = bar.add_task(f"{self.name} training", total=s.steps)
            for step in range(s.steps):
                ids, loss_mask = (t.to(accelerator.device) for t in next(batches))
                loss, record = wrapped(ids, loss_mask, step)
                accelerator.backward(loss)
                for optimizer in optimizers:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                self.after_step()
                if step % s.log_every == 0 or step == s.steps - 1:
                    record = {"step": step, "loss": loss.item(), **record}
                    log.append(record)
                    if accelerator.is_main_process:
                        with log_path.open("a") as f:
                            f.write(json.dumps(record) + "\n")
                    bar.update(
                        job,
                        description=f"{self.name} "
                        + " ".join(f"{k} {v:.3g}" for k, v in record.items() if k != "step"),
                    )
                bar.advance(job)
        if not accelerator.is_main_process:
            return {}
        (out / "settings.json").write_text(s.as_json())
        return self.save(log)
