"""From lm-eval's requests to what the engine runs: which requests share a context, each prompt's tokens fitted to
the model's length, its stops, and (query-agnostic) where its question begins."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

from kvbench.data.common import Template, question_token, truncate_context

log = logging.getLogger("lm_eval.models.kvbench")


def context_span(prompt: str, doc: dict) -> slice | None:
    """Where a kvbench document's context lies in the prompt lm-eval built from it (None for other tasks)."""
    if not doc.get("context_end", 0) > doc.get("context_start", 0):
        return None
    start = prompt.find(doc["prompt"])
    return None if start < 0 else slice(start + doc["context_start"], start + doc["context_end"])


class Prompts:
    """`encode`: the backend's tokenization (it knows whether a chat template already put BOS); `max_length`: the
    tokens the model may see (asked each time: the backend's); `max_gen_toks`: the generation budget when a task
    sets none; `max_positions`: the model's, named in the warning when a prompt must be cut."""

    def __init__(
        self, tokenizer, encode: Callable, max_length: Callable[[], int], max_gen_toks: int, max_positions: int | None
    ):
        self.tokenizer, self.encode, self._max_length = tokenizer, encode, max_length
        self.max_gen_toks, self.max_positions = max_gen_toks, max_positions

    @property
    def max_length(self) -> int:
        return self._max_length()

    def groups(self, requests, query: str) -> list[list[int]]:
        """Requests in order, one group each, except that query-agnostic requests of a multi-question task
        (documents that share a `context_group`) form one group: one context, several questions. Query-agnostic,
        a request whose document does not say where its context ends is refused here, before anything runs."""
        groups: dict = {}
        for index, request in enumerate(requests):
            doc = getattr(request, "doc", None) or {}
            key = ("alone", index)
            if query == "agnostic":
                if context_span(request.args[0], doc) is None:
                    raise ValueError(
                        f"{request.task_name}: query=agnostic needs to know where each prompt's context ends and its "
                        "question begins, and this task's documents do not say (kvbench's tasks do: "
                        "context_start/context_end). Run it with query=aware; it is never run query-aware silently."
                    )
                if doc.get("context_group"):
                    key = (request.task_name, doc["context_group"])
            groups.setdefault(key, []).append(index)
        return sorted(groups.values())

    def prepare(self, request, query: str) -> dict:
        """A generate_until request's prompt tokens (fitted to max_length), options, and, query-agnostic, where
        its question begins."""
        context, gen_kwargs = request.args
        options = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        eot = self.tokenizer.eos_token_id
        eos = self.tokenizer.decode([eot]) if eot is not None else None
        until = [s for s in handle_stop_sequences(options.pop("until", None), eos=eos) if s]
        max_gen_toks = options.pop("max_gen_toks")
        if options.get("do_sample") or options.get("temperature", 0) > 0:
            log.warning(f"{request.task_name}: kvbench decodes greedily; ignoring sampling settings {options}")
        budget = self.max_length - max_gen_toks
        if budget <= 0:
            raise ValueError(
                f"max_gen_toks ({max_gen_toks}) leaves no room for a prompt within max_length ({self.max_length})"
            )
        doc = getattr(request, "doc", None) or {}
        stop_tokens = ()
        if doc.get("stop_at_newline_token"):  # HELMET's stop: a generated newline token, not "\n" inside one
            until, stop_tokens = [s for s in until if s != "\n"], self.newline_token_ids
        why = f"max_length {self.max_length} minus max_gen_toks {max_gen_toks}"
        text, ids, question_char = self.fit_prompt(context, doc, budget, why, request.task_name)
        question_start = None
        if query == "agnostic":
            question_start = self.question_token(text, ids, question_char, request.task_name)
        return {
            "ids": ids,
            "question_start": question_start,
            "until": until,
            "max_gen_toks": max_gen_toks,
            "stop_tokens": stop_tokens,
        }

    def question_token(self, text: str, ids: list[int], question_char: int, task: str) -> int:
        """Where the question of `text` (tokens `ids`) begins, in tokens."""
        bos = self.tokenizer.bos_token
        try:
            encoded, first = question_token(
                self.tokenizer, text, question_char, add_special_tokens=not (bos and text.startswith(bos))
            )
        except ValueError as error:
            raise ValueError(f"{task}: {error}") from None
        if encoded != ids:
            raise ValueError(
                f"{task}: the tokenizer's offsets do not match the prompt's tokens; cannot find where "
                "its question begins"
            )
        return first

    @functools.cached_property
    def newline_token_ids(self) -> tuple[int, ...]:
        """The tokens HELMET stops at when a task stops at a newline: "\n" in each of the usual vocabularies."""
        ids = {self.tokenizer.convert_tokens_to_ids(t) for t in ("\n", "Ċ", "ĊĊ", "<0x0A>")}
        return tuple(sorted(i for i in ids if i is not None and i != self.tokenizer.unk_token_id))

    def fit_prompt(self, prompt: str, doc: dict, budget: int, why: str, task: str):
        """(text, tokens, question character): the prompt within `budget` tokens, and the character where its
        question begins (None if its document does not say). A kvbench task's document says where its context
        lies: then the end of the context is cut, as HELMET does, and the instruction and question stay. Any other
        prompt is cut from the left, as lm-eval's hf backend does."""
        ids = self.encode(prompt)
        span = context_span(prompt, doc)
        if span is None:
            return prompt, self.left_truncate(ids, budget, why), None
        if len(ids) <= budget:
            return prompt, ids, span.stop
        template = Template(prompt[: span.start], prompt[span.stop :])
        shortened = truncate_context(self.tokenizer, template, prompt[span], budget, fix="max_length")
        kept = self.encode(shortened)
        log.warning(
            f"{task}: a prompt of {len(ids)} tokens is over {why}; the end of its context was cut by "
            f"{len(ids) - len(kept)} tokens (as HELMET does), its instruction and question kept. Pass "
            f"max_length= in --model_args if the model holds more positions (this one: {self.max_positions})."
        )
        return shortened, kept, len(shortened) - len(template.suffix)

    def fit_scored(self, whole: list[int]) -> list[int]:
        """As lm-eval's hf backend: the last max_length + 1 tokens of context + continuation (all but the last are
        fed)."""
        return self.left_truncate(whole, self.max_length + 1, f"max_length {self.max_length} + 1")

    @staticmethod
    def left_truncate(ids: list[int], limit: int, why: str) -> list[int]:
        if len(ids) <= limit:
            return ids
        log.warning(
            f"left truncation: a prompt of {len(ids)} tokens was cut to its last {limit} ({why}); "
            f"{len(ids) - limit} tokens were cut from the left"
        )
        return ids[-limit:]
