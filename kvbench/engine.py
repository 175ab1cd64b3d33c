"""generate(): chunked prefill, greedy decode and stop strings, driving model + method + KVCache.

One sequence at a time: padding a batch would inflate the cache and the footprint it reports.
Every forward passes the tokens' true positions, since after eviction the number of entries held
is no longer the position of the next token.

Query-aware (the default) prefills the whole prompt, question included. Query-agnostic (`question_start`)
prefills and evicts the context alone, as a cache built before the question is known, then runs the question in
one forward against what was kept, as a server prefills a question against a cached prefix; `generate_many` asks
several questions of one such context, each from its own copy of it.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from kvbench import attention, devices
from kvbench.cache import KVCache
from kvbench.ledger import FootprintStats, Ledger
from kvbench.method import Method, ModelShape, Phase
from kvbench.settings import DEFAULT_CHUNK_SIZE
from kvbench.step import Step


@dataclass
class Generation:
    """The result of one request."""

    token_ids: list[int]  # generated tokens (an end-of-sequence token included, if one ended it)
    text: str | None  # decoded, cut before the first stop string (None without a tokenizer)
    stats: FootprintStats
    prompt_tokens: int
    decode_steps: int  # forward steps after the prompt (the last generated token is never fed)
    finish_reason: str  # "length", "eos" or "stop"
    logits: list[torch.Tensor] = field(default_factory=list)  # next-token logits per generated token, on request
    trace: list[dict] | None = None  # KV held over the request (ledger.Trace's points), on request
    # The allocator's peak over the request on each GPU the model uses (weights included), reset when it began;
    # with several questions of one context, over the whole group. Empty on a CPU.
    device_peak_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    """How a request runs, with its defaults (generate's keywords, generate_many's, the backend's: one home)."""

    tokenizer: object = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_new_tokens: int = 32
    stop: Sequence[str] = ()
    eos_token_id: int | Sequence[int] | None = None
    attn: str = "sdpa"
    return_logits: bool = False
    stop_token_ids: Sequence[int] = ()
    trace: bool = False


def generate(
    model,
    prompt: str | Sequence[int] | torch.Tensor,
    method: Method | None = None,
    *,
    tokenizer=Options.tokenizer,
    chunk_size: int = Options.chunk_size,
    max_new_tokens: int = Options.max_new_tokens,
    stop: Sequence[str] = Options.stop,
    eos_token_id: int | Sequence[int] | None = Options.eos_token_id,
    attn: str = Options.attn,
    return_logits: bool = Options.return_logits,
    stop_token_ids: Sequence[int] = Options.stop_token_ids,
    trace: bool = Options.trace,
    question_start: int | None = None,
) -> Generation:
    """Greedy generation with `method` managing the KV cache; footprint measured from the cache that ran.

    Generation ends at an end-of-sequence token (left out of the text), at a stop string (the text is cut before
    it) or at one of `stop_token_ids` (kept in the text: HELMET's newline stop).

    `question_start`: the prompt's token index where the question begins, for query-agnostic evaluation: the
    tokens before it are prefilled (chunked) and evicted as a whole prompt would be, so nothing kept depends on
    the question, and the question is then run against what was kept (see `generate_many`). None: query-aware.
    """
    ids = _prompt_ids(prompt, tokenizer)
    options = Options(
        tokenizer, chunk_size, max_new_tokens, stop, eos_token_id, attn, return_logits, stop_token_ids, trace
    )
    if question_start is not None:
        if not isinstance(question_start, int) or not 0 < question_start < len(ids):
            raise ValueError(
                f"question_start must be a token index within the prompt (1..{len(ids) - 1}: a "
                f"context and a question of at least one token each); got {question_start!r}"
            )
        return generate_many(model, ids[:question_start], [ids[question_start:]], method, options=options)[0]
    run = _Request(model, method, len(ids), options)
    ids = ids.to(run.device)
    with kvbench_attention(model), torch.inference_mode():
        logits = prefill(model, run.cache, ids, chunk_size, run.kernel, tokenizer)
        return run.decode(model, run.cache, logits, prompt_tokens=len(ids), fed_steps=0)


def generate_many(
    model,
    context: Sequence[int] | torch.Tensor,
    questions: Sequence[Sequence[int] | torch.Tensor],
    method: Method | None = None,
    options: Options | None = None,
    **keywords,
) -> list[Generation]:
    """Query-agnostic answers to several questions about one context: the context is prefilled and evicted once,
    and each question is run, then answered, on its own copy of the kept cache (one answer never sees another).
    Options as `generate`'s, by keyword or as one `Options`.

    A question (with whatever follows it in the prompt) runs in one forward, the first decode step: its tokens see
    what the context kept and themselves causally, and the method may then evict as after any decode step (a
    StreamingLLM window; a score method at decode only when it evicts while decoding). Nothing the context kept
    was chosen with the question.

    Footprint: each question's figures are those of its own request (context + question + answer), except that
    the context's prefill counts once for all of them, as a cached prefix would: its active entries, and full
    attention's for it, are shared equally among the questions (`Ledger.share_prefix`). With one question they are
    exactly a query-agnostic `generate`'s. Peaks are each question's own.
    """
    context_ids = _prompt_ids(context, None)
    question_ids = [_prompt_ids(q, None) for q in questions]
    if not question_ids:
        raise ValueError("generate_many needs at least one question")
    if options is not None and keywords:
        raise ValueError("give generate_many its options either as keywords or as an Options, not both")
    options = options or Options(**keywords)
    run = _Request(model, method, len(context_ids) + max(len(q) for q in question_ids), options)
    context_ids = context_ids.to(run.device)
    results = []
    with kvbench_attention(model), torch.inference_mode():
        prefill(model, run.cache, context_ids, run.chunk_size, run.kernel, options.tokenizer)
        run.cache.ledger.share_prefix(len(context_ids), len(question_ids))
        for number, question in enumerate(question_ids, start=1):
            # Each question gets a copy of the kept context (and of the method's state); the last takes the
            # original, which nothing needs after it: a single question copies nothing.
            cache = run.cache if number == len(question_ids) else copy.deepcopy(run.cache)
            question = question.to(run.device)
            logits = forward_step(model, cache, question, len(context_ids), Phase(True, 0), kernel=run.kernel)
            results.append(
                run.decode(model, cache, logits, prompt_tokens=len(context_ids) + len(question), fed_steps=1)
            )
    return results


class _Request:
    """What one request's prefill and decoding share: the checked options, the method, the cache."""

    def __init__(self, model, method, prompt_tokens: int, options: Options):
        from kvbench.methods.full import Full  # the default; the engine names no other method

        tokenizer, chunk_size, max_new_tokens, stop = (
            options.tokenizer,
            options.chunk_size,
            options.max_new_tokens,
            options.stop,
        )
        eos_token_id, attn, trace = options.eos_token_id, options.attn, options.trace
        return_logits, stop_token_ids = options.return_logits, options.stop_token_ids

        _check_request(model, chunk_size, max_new_tokens, attn, stop, tokenizer)
        shape = ModelShape.from_config(model.config)
        _check_positions(shape, prompt_tokens, max_new_tokens)
        self.method = method if method is not None else Full()
        self.method.bind(shape)
        self.kernel = attention.select_kernel(model.device, model.dtype, shape.head_dim, attn)
        self.cache = KVCache(shape, self.method, Ledger(shape.num_layers, shape.num_kv_heads, trace=trace))
        self.tokenizer, self.chunk_size, self.max_new_tokens, self.stop = tokenizer, chunk_size, max_new_tokens, stop
        self.eos = _eos_ids(model, tokenizer, eos_token_id)
        self.return_logits, self.stop_token_ids, self.trace = return_logits, stop_token_ids, trace
        self.device = model.device
        self.gpus = devices.model_gpus(model)
        devices.MEMORY.reset(self.gpus)  # the allocator's peak is this request's, on every GPU it uses

    def decode(self, model, cache: KVCache, logits, prompt_tokens: int, fed_steps: int) -> Generation:
        """Greedy decoding from the prompt's last logits. `fed_steps`: decode steps already taken (a
        query-agnostic question's forward), which number the phases that follow."""
        generated: list[int] = []
        all_logits: list[torch.Tensor] = []
        finish_reason = "length"
        decode_steps = 0
        while len(generated) < self.max_new_tokens:
            if self.return_logits:
                all_logits.append(logits.float().cpu())
            token = int(logits.argmax())
            generated.append(token)
            if token in self.eos:
                finish_reason = "eos"
                break
            if token in self.stop_token_ids:
                finish_reason = "stop"
                break
            if (
                self.stop
                and _first_stop(self.tokenizer.decode(generated, skip_special_tokens=True), self.stop) is not None
            ):
                finish_reason = "stop"
                break
            if len(generated) == self.max_new_tokens:
                break
            step = torch.tensor([token], device=self.device)
            logits = forward_step(
                model,
                cache,
                step,
                prompt_tokens + decode_steps,
                Phase(True, fed_steps + decode_steps),
                kernel=self.kernel,
            )
            decode_steps += 1

        text = None
        if self.tokenizer is not None:
            text = self.tokenizer.decode([t for t in generated if t not in self.eos], skip_special_tokens=True)
            cut = _first_stop(text, self.stop)
            text = text if cut is None else text[:cut]
        return Generation(
            token_ids=generated,
            text=text,
            stats=cache.ledger.stats(tokens=prompt_tokens + decode_steps),
            prompt_tokens=prompt_tokens,
            decode_steps=decode_steps,
            finish_reason=finish_reason,
            logits=all_logits,
            trace=cache.ledger.trace.all_points if self.trace else None,
            device_peak_bytes=devices.MEMORY.peak(self.gpus),
        )


@dataclass
class Scoring:
    """Log-likelihood of a continuation after a context (lm-eval's `loglikelihood`)."""

    logprob: float  # sum of the continuation tokens' log-probabilities
    is_greedy: bool  # every continuation token is the argmax after what precedes it
    token_logprobs: list[float]
    stats: FootprintStats
    device_peak_bytes: dict[str, int] = field(default_factory=dict)  # as Generation's


def score_continuation(
    model,
    context: Sequence[int] | torch.Tensor,
    continuation: Sequence[int] | torch.Tensor,
    method: Method | None = None,
    *,
    chunk_size: int = Options.chunk_size,
    attn: str = Options.attn,
) -> Scoring:
    """Log-probabilities of `continuation` after `context`, as a generation under `method` would see them.

    The context is a prompt: prefilled in chunks under the method, evicted as the method evicts after a prompt
    (post-fill methods after its last chunk; a patched schedule scores with the context's own last tokens), so
    nothing the method keeps depends on the continuation. The continuation is then fed as decode steps against
    what was kept: token by token when the method may evict while decoding, else in one forward (the same
    logits and footprint, far fewer steps).
    """
    context_ids = torch.as_tensor(context, dtype=torch.long).flatten()
    target = torch.as_tensor(continuation, dtype=torch.long).flatten()
    if target.numel() == 0:
        raise ValueError("the continuation is empty: nothing to score")
    if context_ids.numel() == 0:
        raise ValueError("the context is empty: the first continuation token has nothing to be predicted from")
    fed = target[:-1]  # the last continuation token is predicted, never fed
    run = _Request(
        model, method, len(context_ids) + len(fed), Options(chunk_size=chunk_size, max_new_tokens=0, attn=attn)
    )
    cache, method, shape, device, kernel = run.cache, run.method, run.cache.shape, run.device, run.kernel
    context_ids, fed, target = context_ids.to(device), fed.to(device), target.to(device)
    with kvbench_attention(model), torch.inference_mode():
        pieces = [prefill(model, cache, context_ids, chunk_size, kernel)[None]]
        if len(fed) and method.evicts_while_decoding():
            for step, token in enumerate(fed):
                pieces.append(
                    forward_step(model, cache, token[None], len(context_ids) + step, Phase(True, step), kernel=kernel)[
                        None
                    ]
                )
        elif len(fed):
            held = cache.num_held
            pieces.append(
                forward_step(model, cache, fed, len(context_ids), Phase(True, 0), all_logits=True, kernel=kernel)
            )
            if cache.num_held != held + len(fed) * shape.num_layers * shape.num_kv_heads:
                raise ValueError(
                    f"method {method.name!r} evicted while decoding, but its evicts_while_decoding() "
                    "says it never does; a continuation would be scored wrongly"
                )
    logits = torch.cat(pieces).float()
    logprobs = logits.log_softmax(dim=-1).gather(1, target[:, None])[:, 0]
    return Scoring(
        logprob=float(logprobs.sum()),
        is_greedy=bool((logits.argmax(dim=-1) == target).all()),
        token_logprobs=logprobs.tolist(),
        stats=cache.ledger.stats(tokens=len(context_ids) + len(fed)),
        device_peak_bytes=devices.MEMORY.peak(run.gpus),
    )


def prefill(
    model,
    cache: KVCache,
    ids: torch.Tensor,
    chunk_size: int,
    kernel: attention.Kernel | None = None,
    tokenizer=None,
) -> torch.Tensor:
    """Run the prompt through the cache in chunks; return the last position's logits.

    Under a patched schedule, every chunk but the last carries the prompt's last tokens, for the
    method to score with; the cache drops their entries after the step. Then the method's extra inputs, if it has
    any (`Method.extra_inputs`: KVzip's reconstruction), each in one forward at the positions after the prompt.
    """
    num_chunks = -(-len(ids) // chunk_size)
    scoring = min(cache.method.scoring_tokens(), len(ids))
    logits = None
    for index in range(num_chunks):
        start = index * chunk_size
        chunk = ids[start : start + chunk_size]
        tail = scoring if index < num_chunks - 1 else 0
        tokens = torch.cat([chunk, ids[len(ids) - tail :]]) if tail else chunk
        runs = [(start, len(chunk))] + ([(len(ids) - tail, tail)] if tail else [])
        logits = forward_step(model, cache, tokens, runs, Phase(False, index, num_chunks), scoring=tail, kernel=kernel)
    extra = cache.method.extra_inputs(ids, tokenizer)
    for index, tokens in enumerate(extra):
        tokens = torch.as_tensor(tokens, dtype=torch.long).to(ids.device)
        forward_step(model, cache, tokens, len(ids), Phase(False, index, len(extra), is_extra=True), kernel=kernel)
    return logits


def forward_step(
    model,
    cache: KVCache,
    tokens,
    positions,
    phase: Phase,
    all_logits=False,
    scoring=0,
    kernel: attention.Kernel | None = None,
):
    """One forward of `tokens` through the cache, at true positions: `positions` is the first one (consecutive
    tokens) or [(first, count), ...] runs of consecutive ones. Returns the last logits, or every fed token's (less
    the scoring tail's, which only the method sees). The step (kvbench.step.Step) appends, attends and evicts."""
    runs = [(positions, len(tokens))] if isinstance(positions, int) else list(positions)
    if kernel is None:
        kernel = attention.select_kernel(model.device, model.dtype, cache.shape.head_dim)
    step = Step(cache, phase, runs, tokens.device, kernel, scoring)
    output = model(
        input_ids=tokens[None],
        position_ids=step.positions[None],
        use_cache=True,
        logits_to_keep=0 if all_logits else 1,
        kvbench_step=step,
        **{cache_argument(model): cache},
    )
    step.finish()
    return output.logits[0, : len(tokens) - scoring] if all_logits else output.logits[0, -1]


def cache_argument(model) -> str:
    """transformers renamed forward's `past_key_values` to `cache` (5.24 warns on the old name)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def kvbench_attention(model):
    """Route the model's attention through kvbench for the duration of a request."""
    return attention.attention_implementation(model, attention.ATTENTION_NAME)


def _prompt_ids(prompt, tokenizer) -> torch.Tensor:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer; pass tokenizer= or token ids")
        ids = tokenizer(prompt, return_tensors="pt").input_ids
    else:
        ids = torch.as_tensor(prompt, dtype=torch.long)
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise ValueError(
                f"kvbench runs one sequence at a time (a padded batch would inflate the KV footprint); "
                f"got a batch of {ids.shape[0]}"
            )
        ids = ids[0]
    if ids.numel() == 0:
        raise ValueError("the prompt is empty: a request needs at least one token")
    return ids


def _check_request(model, chunk_size, max_new_tokens, attn, stop, tokenizer) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"chunk_size must be a positive integer (1 or more tokens per prefill chunk); got {chunk_size!r}"
        )
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0; got {max_new_tokens!r}")
    if stop and tokenizer is None:
        raise ValueError("stop strings need a tokenizer to read the generated text")
    attention.require_attention_interface(model, "kvbench cannot manage its KV cache")


def _check_positions(shape: ModelShape, prompt_tokens: int, max_new_tokens: int) -> None:
    needed = prompt_tokens + max(max_new_tokens - 1, 0)
    if shape.max_positions is not None and needed > shape.max_positions:
        raise ValueError(
            f"a prompt of {prompt_tokens} tokens with {max_new_tokens} new tokens needs {needed} positions; "
            f"the model supports at most {shape.max_positions} (max_position_embeddings)"
        )


def _eos_ids(model, tokenizer, eos_token_id) -> set[int]:
    if eos_token_id is None:
        config = getattr(model, "generation_config", None) or model.config
        eos_token_id = getattr(config, "eos_token_id", None)
        if eos_token_id is None and tokenizer is not None:
            eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    found = [text.find(s) for s in stop if s and s in text]
    return min(found) if found else None
