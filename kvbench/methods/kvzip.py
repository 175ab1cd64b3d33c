"""KVzip (Kim et al., 2025, arXiv 2505.23416): query-agnostic eviction scored by reconstruction. Once the prompt (a
context) is prefilled, whole, the model is asked to repeat it: "Repeat the previous context exactly." followed by the
context itself, in pieces of `chunk_length` tokens (a later piece asks to repeat "starting with" the previous piece's
last 8 tokens). While a piece runs, every held entry of the context part it repeats is scored by the most attention
any of the piece's queries (any query head of its KV head) gives it, the softmax taken over the first `n_sink`
entries (from the second piece on), that part of the context and the piece itself, as the reference does; the
first `n_sink` entries then score above all (never evicted). Then every layer and KV head keeps the entries whose scores rank in the top `keep` share of all
layers' and heads' together (`layerwise`: of each layer's heads): per-head counts differ, so each KV head is stored
in its own group and the savings are real bytes.

The reconstruction is an extra forward pass over about the context's length, which the method asks the engine to
run (`extra_inputs`): its entries are held while it runs (peaks and bytes count them; each piece's entries are dropped
after it), it is counted in no footprint (its tokens are not the request's), and results record its tokens as
`extra_tokens`, the compute it pays. Nothing is evicted before the reconstruction: the prompt is held whole until then.

It reads no question by design: under `query=agnostic` the context alone is prefilled, reconstructed and evicted.
Query-aware, the whole prompt (the question included) is what it reconstructs. Without a tokenizer (token ids given),
the pieces are the context's tokens alone, without the instruction text.

Where it differs from kvpress 0.5.5's KVzipPress: kvpress wraps the instruction in the tokenizer's chat template;
kvbench uses none (it runs the tasks with chat templates off), which is kvpress's way for a tokenizer without one:
the piece is the instruction, a newline, then the context. kvpress masks the evicted entries; kvbench frees them.
A head left with no entry keeps its best one (possible only with `n_sink` 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvbench.method import KeepView, Method, ModelShape, Phase, require

FIRST_INSTRUCTION = "\n\nRepeat the previous context exactly."
LATER_INSTRUCTION = "\n\nRepeat the part of the previous context exactly, starting with"
OVERLAP = 8  # a later piece starts with the previous piece's last tokens


@dataclass
class KVzip(Method):
    keep: float = 0.5
    n_sink: int = 4
    layerwise: bool = False
    chunk_length: int = 2048

    name = "kvzip"
    category = "score"
    description = (
        "Keeps the entries the model attends to most when asked to repeat the context (KVzip); query-agnostic; "
        "pays a reconstruction pass (extra_tokens)."
    )
    knob = "keep"
    knob_values = (0.1, 0.3, 0.5, 0.7, 0.9)
    keeps_everything = {"keep": 1.0}

    def validate(self) -> None:
        require(
            isinstance(self.keep, (int, float)) and 0 < self.keep <= 1, f"keep must be in (0, 1]; got {self.keep!r}"
        )
        require(
            isinstance(self.n_sink, int) and self.n_sink >= 0, f"n_sink must be an integer >= 0; got {self.n_sink!r}"
        )
        require(
            isinstance(self.chunk_length, int) and self.chunk_length >= 1,
            f"chunk_length must be an integer >= 1; got {self.chunk_length!r}",
        )

    def bind(self, shape: ModelShape) -> None:
        self.num_layers = shape.num_layers
        self.pieces: list[tuple[int, int, int]] = []  # (first, end) of the context each extra input repeats, its length
        self.scores: dict[int, torch.Tensor] = {}  # layer -> [KV heads, context] reconstruction scores

    def head_groups(self, layer: int, shape: ModelShape) -> list[list[int]]:
        return [[head] for head in range(shape.num_kv_heads)]  # per-head counts differ: one group per KV head

    def evicts_while_decoding(self) -> bool:
        return False

    def extra_inputs(self, prompt_ids: torch.Tensor, tokenizer=None) -> list[torch.Tensor]:
        self.pieces, self.scores = [], {}
        if self.keep >= 1:  # keeps everything: nothing to score, no pass to pay
            return []
        context = prompt_ids.cpu()
        inputs = []
        for first in range(0, len(context), self.chunk_length):
            part = context[first : first + self.chunk_length]
            if tokenizer is None:
                prefix = context[max(0, first - OVERLAP) : first]
            else:  # the instruction ("starting with" the previous piece's last tokens), then a newline
                text = FIRST_INSTRUCTION if first == 0 else LATER_INSTRUCTION
                prefix = torch.tensor(tokenizer.encode(text, add_special_tokens=False), dtype=torch.long)
                newline = torch.tensor(tokenizer.encode("\n", add_special_tokens=False), dtype=torch.long)
                prefix = torch.cat([prefix, context[max(0, first - OVERLAP) : first], newline])
            tokens = torch.cat([prefix, part])
            self.pieces.append((first, first + len(part), len(tokens)))
            inputs.append(tokens)
        return inputs

    def select_layer(self, views) -> list[torch.Tensor | None]:
        views = list(views)
        phase = views[0].phase
        if not phase.is_extra:
            return [None] * len(views)  # the prompt is held whole until its reconstruction
        first, end, length = self.pieces[phase.chunk_index]
        context = views[0].num_held - length
        if views[0].layer not in self.scores:
            self.scores[views[0].layer] = torch.zeros(len(views), context, device=views[0].keys.device)
        scores = self.scores[views[0].layer]
        for head, view in enumerate(views):
            scores[head, first:end] = _reconstruction_attention(view, first, end, min(self.n_sink, first), length)
        # the piece's own entries go: only the context is kept (it is evicted once every piece has run)
        return [view.keep_ranges(range(0, context)) for view in views]

    def finish_step(self, phase: Phase) -> dict[int, list[torch.Tensor | None]]:
        if not (phase.is_extra and phase.chunk_index == phase.num_chunks - 1):
            return {}
        scores = torch.stack([self.scores[layer] for layer in range(self.num_layers)])  # [layers, heads, context]
        scores[..., : self.n_sink] = scores.amax() + 1  # the sinks are never evicted
        layers, heads, context = scores.shape
        kept = torch.zeros_like(scores, dtype=torch.bool)
        if self.layerwise:  # each layer keeps the same share, spread over its heads by score
            evict = int(heads * context * (1 - self.keep))
            for layer in range(layers):
                kept[layer].view(-1)[scores[layer].flatten().topk(heads * context - evict).indices] = True
        else:
            evict = int(scores.numel() * (1 - self.keep))
            kept.view(-1)[scores.flatten().topk(scores.numel() - evict).indices] = True
        # A head left with nothing would attend over nothing: it keeps its best entry (only possible with n_sink 0).
        best = scores.argmax(dim=-1, keepdim=True)
        kept.scatter_(-1, best, kept.gather(-1, best) | ~kept.any(dim=-1, keepdim=True))
        return {
            layer: [kept[layer, head].nonzero().flatten()[None] for head in range(heads)] for layer in range(layers)
        }


def _reconstruction_attention(view: KeepView, first: int, end: int, sink: int, length: int) -> torch.Tensor:
    """[end - first]: the most attention any query of the piece (any query head of this KV head) gives each entry of
    the context part it repeats, the softmax over the first `sink` entries, that part, and the piece causally."""
    held = view.num_held
    index = torch.cat([torch.arange(0, sink), torch.arange(first, end), torch.arange(held - length, held)]).to(
        view.keys.device
    )
    keys = view.keys[:, index].float()  # [1, s + part + piece, d]
    queries = view.queries.float()  # [1, r, piece, d]
    logits = torch.einsum("hrqd,hnd->hrqn", queries, keys) * view.scaling
    own = torch.arange(length, device=keys.device)
    causal = own[None, :] <= own[:, None]  # a piece query sees the piece up to itself
    outside = index.shape[0] - length
    mask = torch.cat([torch.ones(length, outside, dtype=torch.bool, device=keys.device), causal], dim=1)
    weights = logits.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return weights[..., sink : sink + end - first].amax(dim=(1, 2))[0]
