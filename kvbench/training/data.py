"""Training sequences for head-pattern training: token ids plus a mask of the tokens the loss is taken on.

Two sources:
- the synthetic task generators (`kvbench.data.synth`): prompt + answer + newline, the loss on the answer
  (the prompt's keys and filler are random: predicting them teaches nothing about which heads retrieve).
  Seeds differ from the evaluation's (seed 42), so training never sees an evaluated prompt. The answer is the
  gold one or the model's own at full attention (`answers="model"`): a gold re-ranking orders equally relevant
  documents arbitrarily, so its next-token loss mostly measures tie order, not whether the model can still
  read the documents; the model's own answer is what full attention would produce, as DuoAttention's
  objective compares against full attention.
- the user's own files: `.txt` (one text, cut into sequences, loss on every token) or `.jsonl` with either
  {"text": ...} per line (the same) or {"prompt": ..., "answer": ...} (loss on the answer).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from kvbench.data import common, synth

SYNTHETIC = tuple(synth.GENERATORS)


@dataclass
class Sequence:
    ids: torch.Tensor  # [n] long
    loss_mask: torch.Tensor  # [n] bool: predict token i from tokens < i where loss_mask[i]


def answer_sequence(tokenizer, prompt: str, answer: str) -> Sequence:
    """prompt ids (as generation sees them) followed by the answer and a newline, supervised on the latter."""
    prompt_ids = tokenizer(prompt).input_ids
    answer_ids = tokenizer(answer + "\n", add_special_tokens=False).input_ids
    ids = torch.tensor(prompt_ids + answer_ids)
    mask = torch.zeros(len(ids), dtype=torch.bool)
    mask[len(prompt_ids) :] = True
    return Sequence(ids, mask)


def synthetic_sequences(
    tokenizer, tasks=("synth_recall",), length: int = 1024, seed: int = 0, answer_fn=None
) -> Iterator[Sequence]:
    """An endless stream of synthetic prompts, the tasks taken in turn, supervised on the gold answer or, with
    `answer_fn(task, prompt)`, on another (e.g. the model's own full-attention answer)."""
    unknown = sorted(set(tasks) - set(SYNTHETIC))
    if unknown:
        raise ValueError(f"unknown synthetic task(s) {', '.join(unknown)}; choose from {', '.join(SYNTHETIC)}")
    s = common.settings({common.LENGTH_KEY: length, "num_samples": 1, "seed": seed, "tokenizer": tokenizer})
    for i in itertools.count():
        task = tasks[i % len(tasks)]
        rng = random.Random(common.rng_seed(task, s.seed, s.length, i))
        sample = synth.GENERATORS[task](s, rng, s.length - synth.GEN_TOKENS[task])
        answer = sample["answers"][0] if answer_fn is None else answer_fn(task, sample["prompt"])
        yield answer_sequence(tokenizer, sample["prompt"], answer)


def file_sequences(tokenizer, path, length: int, seed: int = 0) -> Iterator[Sequence]:
    """An endless, shuffled stream of sequences from a .txt or .jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"training data file not found: {path}")
    items = _read_file(tokenizer, path, length)
    if not items:
        raise ValueError(f"{path}: no training sequence (a text of at least 2 tokens, or prompt/answer rows)")
    rng = random.Random(seed)
    while True:
        yield from rng.sample(items, len(items))


def _read_file(tokenizer, path: Path, length: int) -> list[Sequence]:
    if path.suffix == ".txt":
        return _cut(tokenizer(path.read_text()).input_ids, length)
    if path.suffix != ".jsonl":
        raise ValueError(f"{path}: training data must be .txt or .jsonl")
    items, stream = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            stream += tokenizer(row["text"]).input_ids
        elif isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("answer"), str):
            items.append(answer_sequence(tokenizer, row["prompt"], row["answer"]))
        else:
            raise ValueError(f'{path}:{number}: each row needs "text", or "prompt" and "answer" (strings)')
    return items + _cut(stream, length)


def _cut(ids: list[int], length: int) -> list[Sequence]:
    """Consecutive sequences of `length` tokens (the last one shorter), loss on every token."""
    pieces = [torch.tensor(ids[i : i + length]) for i in range(0, len(ids), length)]
    return [Sequence(p, torch.ones(len(p), dtype=torch.bool)) for p in pieces if len(p) >= 2]


def batches(
    sequences: Iterator[Sequence], batch_size: int, pad_id: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(ids [b, n], loss_mask [b, n]) right-padded: padding comes after every real token, so causal
    attention keeps it out of them, and the mask keeps it out of the loss."""
    while True:
        group = list(itertools.islice(sequences, batch_size))
        if not group:
            return
        n = max(len(s.ids) for s in group)
        ids = torch.full((len(group), n), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), n), dtype=torch.bool)
        for row, s in enumerate(group):
            ids[row, : len(s.ids)] = s.ids
            mask[row, : len(s.ids)] = s.loss_mask
        yield ids, mask


def next_token_loss(
    model, hidden: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """Mean cross-entropy of predicting ids[:, i] from the final hidden state at i - 1, over the masked tokens.

    The output layer runs on the supervised positions only, `chunk` at a time under checkpointing: a long
    sequence times a large vocabulary would not fit as one logits tensor.
    """
    from torch.utils.checkpoint import checkpoint

    target_mask = loss_mask[:, 1:]
    states, targets = hidden[:, :-1][target_mask], ids[:, 1:][target_mask]
    if len(targets) == 0:
        raise ValueError("a training batch has no supervised token (empty answers?)")
    head = model.get_output_embeddings()

    def summed(h, t):
        return torch.nn.functional.cross_entropy(head(h).float(), t, reduction="sum")

    total = sum(
        checkpoint(summed, states[i : i + chunk], targets[i : i + chunk], use_reentrant=False)
        for i in range(0, len(targets), chunk)
    )
    return total / len(targets)
