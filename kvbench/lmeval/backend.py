"""The lm-eval model backend "kvbench": lm-eval's requests answered by the kvbench engine under a method.

    lm_eval --model kvbench --model_args pretrained=PATH,method=streamingllm,window=1024,chunk_size=32768 ...

Every request runs alone (a padded batch would inflate the cache and the footprint it reports), and
its measured footprint is added to its task's tally; `get_model_info()` hands the tallies to lm-eval,
which writes them into the results JSON as `results["config"]["kvbench"]`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path

import jinja2
import torch
import transformers
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, resolve_max_length
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

import kvbench
from kvbench import attention
from kvbench.data.common import SOURCES, Template, question_token, truncate_context
from kvbench.engine import DEFAULT_CHUNK_SIZE, QUERY_MODES, generate, generate_many, score_continuation
from kvbench.lmeval.tally import FootprintTally
from kvbench.method import ModelShape
from kvbench.plugins import describe_parameters, load_method, method_class
from kvbench.tiny import resolve_pretrained

# A child of lm-eval's logger, so our lines show with lm-eval's own, in its format and at its verbosity.
log = logging.getLogger("lm_eval.models.kvbench")

BACKEND_ARGS = (
    "pretrained",
    "method",
    "chunk_size",
    "dtype",
    "device",
    "attn",
    "max_length",
    "trust_remote_code",
    "parallelize",
    "device_map",
    "max_memory_per_gpu",
    "max_cpu_memory",
    "trace",
    "query",
)
DEFAULT_MAX_LENGTH = 2048  # as lm-eval's hf backend, when neither config nor tokenizer gives one


class KVText(str):
    """A `generate_until` answer that also carries the KV footprint measured for its request.

    `footprint` is `FootprintStats.as_dict()`: a dict with keys kv_footprint, kv_peak, kv_peak_bytes,
    kv_entries and tokens (see kvbench's README). A task's `process_results` can read it as
    `getattr(response, "footprint", None)`: None with other backends, or when a filter rebuilt the string.
    Everywhere else it is the plain string (comparisons, JSON, `--log_samples`).
    """

    footprint: dict | None = None

    def __new__(cls, text: str, footprint: dict | None = None):
        answer = super().__new__(cls, text)
        answer.footprint = footprint
        return answer


class KVBenchLM(TemplateLM):
    # The lm-eval hook's mark: `evaluate` logs this model's samples and gives them their footprints.
    kvbench_backend = True

    def __init__(
        self,
        pretrained: str | None = None,
        method: str = "full",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        dtype: str = "auto",
        device: str | None = None,
        attn: str = "sdpa",
        max_length: int | None = None,
        trust_remote_code: bool = False,
        parallelize: bool = False,
        device_map: str | dict | None = None,
        max_memory_per_gpu: int | str | None = None,
        max_cpu_memory: int | str | None = None,
        trace: bool = False,
        query: str = "aware",
        batch_size: int | str | None = 1,
        max_batch_size: int | None = None,
        **method_params,
    ):
        super().__init__()
        if not pretrained:
            raise ValueError("--model_args needs pretrained=PATH_OR_HUB_NAME (the model to evaluate)")
        self.method = _load_method(method, method_params)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer (tokens per prefill chunk); got {chunk_size!r}")
        if attn not in ("sdpa", "flash"):
            raise ValueError(f"attn must be sdpa or flash; got {attn!r}")
        if str(batch_size) not in ("1", "None"):
            log.warning(
                f"batch_size={batch_size} accepted but kvbench runs one sequence at a time: padding a batch would "
                "inflate the KV cache and the footprint it reports"
            )
        self.pretrained, self.chunk_size, self.attn = pretrained, chunk_size, attn
        self.trace = _bool(trace, "trace")  # each generate_until sample's KV held over time, in its samples-file row
        if query not in QUERY_MODES:
            raise ValueError(
                f"query must be aware (the question is prefilled with its context) or agnostic (the "
                f"context is prefilled and evicted before the question is known); got {query!r}"
            )
        self.query = query
        self._device = self._data_parallel(_pick_device(device))
        path = resolve_pretrained(pretrained)  # "kvbench-tiny" is the bundled checkpoint
        if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(
                f"pretrained={pretrained}: the folder holds no model (no config.json); point "
                "pretrained= at a checkpoint folder (config.json, weights, tokenizer) or a hub name"
            )
        placement = _model_parallel(_bool(parallelize, "parallelize"), device_map, max_memory_per_gpu, max_cpu_memory)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self._model = transformers.AutoModelForCausalLM.from_pretrained(
                path, dtype=_torch_dtype(dtype), trust_remote_code=trust_remote_code, **placement
            ).eval()
        except OSError as error:  # transformers' "not a local folder, and not on the Hub" (after its retries)
            reason = str(error).strip().splitlines()[0]
            raise ValueError(
                f"pretrained={pretrained}: cannot load it ({reason}); point pretrained= at a local "
                "checkpoint folder, or check the hub name and your connection"
            ) from None
        if not placement:
            self._model.to(self._device)
        else:  # the layers stay where the device map put them; requests start on the embeddings' device
            self._device = self._model.device
        # The attention kernel this model runs with, or the one-line reason there is none (at load, not mid-run).
        self.kernel = attention.select_kernel(
            self._model.device, self._model.dtype, ModelShape.from_config(self._model.config).head_dim, attn
        )
        self._max_length = int(max_length) if max_length else None
        self.chat_template_args: dict = {}
        self.tally = FootprintTally()
        self._pending: list = []  # what each request of a loglikelihood call ran as, in request order

    def _data_parallel(self, device: torch.device) -> torch.device:
        """Under `accelerate launch` or `torchrun`, each process takes its share of the requests, as lm-eval's hf
        backend does: rank and world size for lm-eval's split, this process's device for its model copy. Without
        CUDA (or with device=cpu) the processes talk over gloo."""
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=device.type == "cpu")
        if accelerator.num_processes == 1:
            self._rank, self._world_size = 0, 1
            return device
        self.accelerator = accelerator
        # The global index: on several machines, local indices would repeat and the same requests run twice.
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        return accelerator.device

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

    def gather_tallies(self) -> None:
        """Once, after every request type has run (the lm-eval hook calls it on every process, after `evaluate`):
        the tallies go to rank 0, whose results file then holds every process's requests, as a single process would.
        A process that ran no request of some type (or none at all) hands over what it has, possibly nothing."""
        if self.world_size > 1:
            parts = self.gather_object(self.tally.export())
            if self.rank == 0:
                for part in parts:
                    self.tally.absorb(part)

    def _count(self, request, *results) -> None:
        """A request's footprint (and its allocator peaks) into its task's tally, under its document (the per-sample
        rows read it there). `results`: the Generation or Scorings it ran as."""
        doc = getattr(request, "doc", None) or {}
        self.tally.add(
            request.task_name,
            *[r.stats for r in results],
            doc_id=getattr(request, "doc_id", None),
            context_group=doc.get("context_group") if isinstance(doc, dict) else None,
            device_peak_bytes=_largest(r.device_peak_bytes for r in results),
        )

    def _tallied(self, requests) -> list[bool]:
        """Whether each request counts in the tallies. With several processes, lm-eval pads a process's requests
        with copies of its last one, so that all run as many: those copies ran, but count once."""
        seen: dict[int, int] = {}
        counted = []
        for request in requests:
            seen[id(request)] = seen.get(id(request), 0) + 1
            counted.append(seen[id(request)] <= (getattr(request, "repeats", None) or 1))
        return counted

    # ---- what lm-eval's TemplateLM needs ----

    @property
    def model(self):
        return self._model

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:  # the context of a loglikelihood request with an empty context
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length or resolve_max_length(self._model.config, self.tokenizer, default=DEFAULT_MAX_LENGTH)

    @property
    def max_gen_toks(self) -> int:
        return 256

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        options = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        bos = self.tokenizer.bos_token
        if add_special_tokens is None and bos and string.startswith(bos):  # a chat template already put BOS
            options["add_special_tokens"] = False
        return self.tokenizer.encode(string, **options)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        def render(history):
            return self.tokenizer.apply_chat_template(
                history,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
                **self.chat_template_args,
            )

        try:
            return render(chat_history)
        except jinja2.exceptions.TemplateError:  # templates that refuse a system turn, as lm-eval's hf backend does
            log.warning("the chat template failed; retrying without the system message")
            return render([m for m in chat_history if m["role"] != "system"])

    # ---- requests ----

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._refuse_agnostic(requests, "log-likelihood")
        self._pending = []  # _loglikelihood_tokens fills it in request order
        results = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        for request, ran, counted in zip(requests, self._pending, self._tallied(requests), strict=True):
            if counted:
                self._count(request, ran)
        return results

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results = []
        shared = None  # (inputs, log-probs, stats) of the last one-token request
        for key, context, continuation in tqdm(requests, disable=disable_tqdm, desc="kvbench loglikelihood"):
            if len(continuation) == 1:
                # Multiple-choice answers of one token share their input (the context): one forward serves
                # them all, as lm-eval's hf backend does; each request still gets the footprint it ran with.
                inputs = self._fit(context + continuation)[:-1]
                if shared is None or shared[0] != inputs:
                    last = self._timed(
                        generate,
                        self._model,
                        inputs,
                        self.method,
                        chunk_size=self.chunk_size,
                        max_new_tokens=1,
                        eos_token_id=[],
                        attn=self.attn,
                        return_logits=True,
                    )
                    shared = (inputs, last.logits[0].log_softmax(-1), last)
                logprobs, token = shared[1], continuation[0]
                results.append((float(logprobs[token]), bool(logprobs.argmax() == token)))
                self._pending.append(shared[2])
            else:
                scoring = self._score(context, continuation)
                results.append((scoring.logprob, scoring.is_greedy))
                self._pending.append(scoring)
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, results[-1])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        self._refuse_agnostic(requests, "rolling log-likelihood")
        results = []
        for request, counted in zip(
            tqdm(requests, disable=disable_tqdm, desc="kvbench loglikelihood_rolling"), self._tallied(requests)
        ):
            (text,) = request.args
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            scorings = [self._score(*make_disjoint_window(window)) for window in windows]
            results.append(sum(s.logprob for s in scorings))
            if counted:  # one request, however many windows
                self._count(request, *scorings)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), results[-1])
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list[KVText | None] = [None] * len(requests)
        counted = self._tallied(requests)
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="kvbench generate_until")
        # Grouped up front from the documents alone (and a query-agnostic task without a boundary refused before
        # any work); each group's prompts are tokenized when it runs, so a 128K run holds one group's tokens.
        for group in self._context_groups(requests):
            prepared = [self._prepare(requests[index]) for index in group]
            first = prepared[0]
            run = functools.partial(
                self._timed,
                generate if len(group) == 1 else generate_many,
                self._model,
                method=self.method,
                tokenizer=self.tokenizer,
                chunk_size=self.chunk_size,
                max_new_tokens=first["max_gen_toks"],
                stop=first["until"],
                attn=self.attn,
                stop_token_ids=first["stop_tokens"],
                trace=self.trace,
            )
            if len(group) == 1:
                generations = [run(first["ids"], question_start=first["question_start"])]
            else:  # one context, several questions: prefilled and evicted once (query-agnostic only)
                cut = first["question_start"]
                for other in prepared[1:]:
                    if other["ids"][: other["question_start"]] != first["ids"][:cut] or any(
                        other[k] != first[k] for k in ("until", "max_gen_toks", "stop_tokens")
                    ):
                        task, name = requests[group[0]].task_name, requests[group[0]].doc["context_group"]
                        raise ValueError(
                            f"{task}: the documents of context_group {name!r} do not share one context "
                            "(the same tokens before the question) and generation settings"
                        )
                generations = run(first["ids"][:cut], [p["ids"][cut:] for p in prepared])
            for index, generation in zip(group, generations, strict=True):
                request = requests[index]
                answer = KVText(generation.text, {**generation.stats.as_dict(), "trace": generation.trace})
                if counted[index]:
                    self._count(request, generation)
                results[index] = answer
                self.cache_hook.add_partial("generate_until", request.args, str(answer))
            progress.update(len(group))
        progress.close()
        return results

    def _context_groups(self, requests) -> list[list[int]]:
        """Requests in order, one group each, except that query-agnostic requests of a multi-question task
        (documents that share a `context_group`) form one group: one context, several questions. Query-agnostic,
        a request whose document does not say where its context ends is refused here, before anything runs."""
        groups: dict = {}
        for index, request in enumerate(requests):
            doc = getattr(request, "doc", None) or {}
            key = ("alone", index)
            if self.query == "agnostic":
                if _context_span(request.args[0], doc) is None:
                    raise ValueError(
                        f"{request.task_name}: query=agnostic needs to know where each prompt's context ends and its "
                        "question begins, and this task's documents do not say (kvbench's tasks do: "
                        "context_start/context_end). Run it with query=aware; it is never run query-aware silently."
                    )
                if doc.get("context_group"):
                    key = (request.task_name, doc["context_group"])
            groups.setdefault(key, []).append(index)
        return sorted(groups.values())

    def _prepare(self, request) -> dict:
        """A generate_until request's prompt tokens (fitted to max_length), options, and, query-agnostic, where
        its question begins."""
        context, gen_kwargs = request.args
        options = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        eos = self.tokenizer.decode([self.eot_token_id]) if self.eot_token_id is not None else None
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
        text, ids, question_char = self._fit_prompt(context, doc, budget, why, request.task_name)
        question_start = None
        if self.query == "agnostic":
            question_start = self._question_token(text, ids, question_char, request.task_name)
        return {
            "ids": ids,
            "question_start": question_start,
            "until": until,
            "max_gen_toks": max_gen_toks,
            "stop_tokens": stop_tokens,
        }

    def _question_token(self, text: str, ids: list[int], question_char: int, task: str) -> int:
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

    def _fit_prompt(self, prompt: str, doc: dict, budget: int, why: str, task: str):
        """(text, tokens, question character): the prompt within `budget` tokens, and the character where its
        question begins (None if its document does not say). A kvbench task's document says where its context
        lies: then the end of the context is cut, as HELMET does, and the instruction and question stay. Any other
        prompt is cut from the left, as lm-eval's hf backend does."""
        ids = self.tok_encode(prompt)
        span = _context_span(prompt, doc)
        if span is None:
            return prompt, self._left_truncate(ids, budget, why), None
        if len(ids) <= budget:
            return prompt, ids, span.stop
        template = Template(prompt[: span.start], prompt[span.stop :])
        shortened = truncate_context(self.tokenizer, template, prompt[span], budget, fix="max_length")
        kept = self.tok_encode(shortened)
        log.warning(
            f"{task}: a prompt of {len(ids)} tokens is over {why}; the end of its context was cut by "
            f"{len(ids) - len(kept)} tokens (as HELMET does), its instruction and question kept. Pass "
            f"max_length= in --model_args if the model holds more positions (this one: "
            f"{self._model.config.max_position_embeddings})."
        )
        return shortened, kept, len(shortened) - len(template.suffix)

    def _fit(self, whole: list[int]) -> list[int]:
        """As lm-eval's hf backend: the last max_length + 1 tokens of context + continuation (all but the last are fed)."""
        return self._left_truncate(whole, self.max_length + 1, f"max_length {self.max_length} + 1")

    def _score(self, context: list[int], continuation: list[int]):
        if len(continuation) > self.max_length:
            raise ValueError(f"a continuation of {len(continuation)} tokens exceeds max_length ({self.max_length})")
        whole = self._fit(context + continuation)
        return self._timed(
            score_continuation,
            self._model,
            whole[: len(whole) - len(continuation)],
            continuation,
            self.method,
            chunk_size=self.chunk_size,
            attn=self.attn,
        )

    def _left_truncate(self, ids: list[int], limit: int, why: str) -> list[int]:
        if len(ids) <= limit:
            return ids
        log.warning(
            f"left truncation: a prompt of {len(ids)} tokens was cut to its last {limit} ({why}); "
            f"{len(ids) - limit} tokens were cut from the left"
        )
        return ids[-limit:]

    def _refuse_agnostic(self, requests, kind: str) -> None:
        if self.query == "agnostic" and requests:
            raise ValueError(
                f"{requests[0].task_name}: query=agnostic runs generate_until tasks; {kind} requests do "
                "not separate a context from its question. Run this task with query=aware."
            )

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.tally.seconds += time.perf_counter() - start
        return result

    # ---- what lm-eval writes into results["config"] ----

    def get_model_info(self) -> dict:
        run = {
            "method": self.method.name,
            "method_params": {f.name: getattr(self.method, f.name) for f in dataclasses.fields(self.method)},
            "chunk_size": self.chunk_size,
            "query": self.query,
            "attn": self.attn,
            "attention_kernel": self._kernels(),
            "model": self.pretrained,
            "model_dtype": str(self._model.dtype),
            "device": str(self._device),
            "processes": self.world_size,
            "max_length": self.max_length,
            "versions": {
                "kvbench": kvbench.__version__,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
            },
            **self.tally.summary(),
        }
        # Which data each task ran on (HELMET's files and their SHA-256, or a generator and its version).
        run["data"] = {task: SOURCES[task] for task in run["tasks"] if task in SOURCES}
        return {"kvbench": run}

    def _kernels(self) -> dict[str, str]:
        """The attention kernel each kind of layer ran: sliding-window layers go by blocks of positions where their
        window may cut into what is held."""
        kernels = {"full attention": self.kernel.name}
        config = self._model.config
        if getattr(config, "sliding_window", None):
            types = getattr(config, "layer_types", None) or ["sliding_attention"]
            if "sliding_attention" in types:
                kernels["sliding window"] = f"{self.kernel.name}, by position blocks where the window cuts"
                if "full_attention" not in types:
                    del kernels["full attention"]
        return kernels


def _largest(peaks) -> dict[str, int]:
    """Per device, the largest of several allocator peaks (a request scored in several windows)."""
    out: dict[str, int] = {}
    for peak in peaks:
        for device, value in peak.items():
            out[device] = max(out.get(device, 0), value)
    return out


def _context_span(prompt: str, doc: dict) -> slice | None:
    """Where a kvbench document's context lies in the prompt lm-eval built from it (None for other tasks)."""
    if not doc.get("context_end", 0) > doc.get("context_start", 0):
        return None
    start = prompt.find(doc["prompt"])
    return None if start < 0 else slice(start + doc["context_start"], start + doc["context_end"])


def _load_method(name: str, params: dict):
    """lm-eval has already turned "512" into 512 and "0.5" into 0.5; give the method back the strings so
    that kvbench's own conversion checks each parameter against its declared type."""
    # An integral float goes back as an integer ("-5", not "-5.0"): lm-eval parses "-5" as a float, and the
    # method's own check should then say what is wrong with -5 (its range), not that it is no integer.
    as_given = {
        key: value if value is None else str(int(value) if isinstance(value, float) and value.is_integer() else value)
        for key, value in params.items()
    }
    try:
        return load_method(name, **as_given)
    except ValueError as error:
        message = str(error)
        if not message.startswith("unknown method"):
            cls = method_class(name)
            if "its parameters" not in message:
                message += f"; method {name!r} takes: {describe_parameters(cls) or 'no parameters'}"
            message += f" (backend arguments: {', '.join(BACKEND_ARGS)})"
        raise ValueError(f"--model_args: {message}") from None


def _model_parallel(parallelize: bool, device_map, max_memory_per_gpu, max_cpu_memory) -> dict:
    """from_pretrained's placement arguments for one model split across devices (lm-eval's hf backend's names):
    `parallelize=True` spreads the layers over the visible GPUs (device_map "auto", at most `max_memory_per_gpu`
    each); `device_map=` places them as given. Each layer's KV cache then lives on its layer's device."""
    if not parallelize and device_map is None:
        return {}
    placement = {"device_map": device_map or "auto"}
    if max_memory_per_gpu is not None or max_cpu_memory is not None:
        memory = {i: max_memory_per_gpu for i in range(torch.cuda.device_count())} if max_memory_per_gpu else {}
        if max_cpu_memory is not None:
            memory["cpu"] = max_cpu_memory
        placement["max_memory"] = memory
    return placement


def _bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no", "none"):
        return False
    raise ValueError(f"{name} must be true or false; got {value!r}")


def _pick_device(device: str | None) -> torch.device:
    if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        if device is not None:  # lm-eval passes "cuda" unless told otherwise: no news on a CPU machine
            log.info(f"device {device!r}: CUDA is not available here; using the CPU")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _torch_dtype(dtype):
    if dtype in (None, "auto") or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype must be auto, float32, float16 or bfloat16; got {dtype!r}")
    return value
