"""The lm-eval model backend "kvbench": lm-eval's requests answered by the kvbench engine under a method.

    lm_eval --model kvbench --model_args pretrained=PATH,method=streamingllm,window=1024,chunk_size=32768 ...

A thin adapter over pieces with one job each: loading and placing the model and the processes sharing the requests
(loading.py), from requests to fitted prompts (prompts.py), the footprint tallies (tally.py), per-sample rows
(samples.py). Every request runs alone (a padded batch would inflate the cache and the footprint it reports), and
its measured footprint is added to its task's tally; `get_model_info()` hands the tallies to lm-eval, which writes
them into the results JSON as `results["config"]["kvbench"]`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import jinja2
import torch
import transformers
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import resolve_max_length
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

import kvbench
from kvbench import attention
from kvbench.data.common import sources_of
from kvbench.engine import generate, generate_many, score_continuation
from kvbench.lmeval import loading
from kvbench.lmeval.prompts import Prompts
from kvbench.lmeval.tally import FootprintTally
from kvbench.method import ModelShape
from kvbench.plugins import describe_parameters, load_method, method_class
from kvbench.settings import DEFAULT_CHUNK_SIZE, check_query, parse_bool

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
MAX_GEN_TOKS = 256  # a generate_until task's budget when it sets none, as lm-eval's hf backend


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
        self.configure(method, chunk_size, query, **method_params)
        if attn not in attention.ATTENTION_KERNELS:
            raise ValueError(f"attn must be one of {', '.join(attention.ATTENTION_KERNELS)}; got {attn!r}")
        if str(batch_size) not in ("1", "None"):
            log.warning(
                f"batch_size={batch_size} accepted but kvbench runs one sequence at a time: padding a batch would "
                "inflate the KV cache and the footprint it reports"
            )
        self.pretrained, self.attn = pretrained, attn
        self.trace = parse_bool(trace, "trace")  # each generate_until sample's KV held over time, in its sample row
        self.processes = loading.Processes(loading.pick_device(device))
        self._rank, self._world_size = self.processes.rank, self.processes.world_size  # read by lm-eval's LM
        arguments = loading.placement(parallelize, device_map, max_memory_per_gpu, max_cpu_memory)
        self._model, self.tokenizer = loading.load(
            pretrained, dtype, parse_bool(trust_remote_code, "trust_remote_code"), arguments, self.processes.device
        )
        # A model placed by a device map: requests start on the embeddings' device.
        self._device = self._model.device if arguments else self.processes.device
        # The attention kernel this model runs with, or the one-line reason there is none (at load, not mid-run).
        self.kernel = attention.select_kernel(
            self._model.device, self._model.dtype, ModelShape.from_config(self._model.config).head_dim, attn
        )
        self._max_length = int(max_length) if max_length else None
        self.prompts = Prompts(
            self.tokenizer,
            self.tok_encode,
            lambda: self.max_length,
            MAX_GEN_TOKS,
            getattr(self._model.config, "max_position_embeddings", None),
        )
        self.chat_template_args: dict = {}

    def configure(
        self, method: str = "full", chunk_size: int = DEFAULT_CHUNK_SIZE, query: str = "aware", **method_params
    ) -> None:
        """What a run measures, checked: the method with its parameters (as --model_args gives them), the prefill
        chunk size, the query mode; and a fresh tally. The constructor calls it, and `kvbench sweep` calls it to
        reuse one loaded model for every cell."""
        self.method = _load_method(method, method_params)
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer (tokens per prefill chunk); got {chunk_size!r}")
        self.chunk_size, self.query = chunk_size, check_query(query)
        self.tally = FootprintTally()

    # ---- the processes sharing the requests (lm-eval calls these) ----

    def set_cache_hook(self, cache_hook) -> None:
        # Only lm-eval's CachingLM (--use_cache) calls this. A request it answers from its cache never reaches the
        # backend, so its KV measurements would be missing from the tallies: refused, pointing at the sweep's resume.
        raise ValueError(
            "--use_cache answers requests from lm-eval's response cache, which holds no KV measurements (the "
            "footprint of every cached request would be lost); to resume a long run use `kvbench sweep`, which "
            "skips the cells already done"
        )

    def all_gather(self, tensor):
        return self.processes.all_gather(tensor)

    def gather_object(self, obj, dst: int = 0):
        return self.processes.gather_object(obj, dst)

    def barrier(self) -> None:
        self.processes.barrier()

    def gather_tallies(self) -> None:
        """Once, after every request type has run (the lm-eval hook calls it on every process, after `evaluate`):
        the tallies go to rank 0, whose results file then holds every process's requests, as a single process would.
        A process that ran no request of some type (or none at all) hands over what it has, possibly nothing."""
        if self.world_size > 1:
            parts = self.gather_object(self.tally.export())
            if self.rank == 0:
                for part in parts:
                    self.tally.absorb(part)

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
        return MAX_GEN_TOKS

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    @property
    def newline_token_ids(self) -> tuple[int, ...]:
        return self.prompts.newline_token_ids

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
        pairs = [
            ((context, continuation), *self._encode(context, continuation))
            for context, continuation in (request.args for request in requests)
        ]
        results, runs = self._score_pairs(pairs, disable_tqdm)
        for request, ran, counted in zip(requests, runs, self.tally.counted(requests), strict=True):
            if counted:
                self.tally.count(request, ran)
        return results

    def _encode(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context:
            return self._encode_pair(context, continuation)
        # An empty context: the continuation is conditioned on the prefix token (BOS, else EOS), unless it starts
        # with it already.
        tokens = self.tok_encode(continuation, add_special_tokens=False)
        return ([self.prefix_token_id], tokens) if tokens[0] != self.prefix_token_id else (tokens[:1], tokens[1:])

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        return self._score_pairs(requests, disable_tqdm)[0]

    def _score_pairs(self, requests, disable_tqdm: bool) -> tuple[list[tuple[float, bool]], list]:
        """((log-probability, is greedy), what it ran as) of each (key, context tokens, continuation tokens)."""
        results, runs = [], []
        shared = None  # (inputs, log-probs, generation) of the last one-token request
        for key, context, continuation in tqdm(requests, disable=disable_tqdm, desc="kvbench loglikelihood"):
            if len(continuation) == 1:
                # Multiple-choice answers of one token share their input (the context): one forward serves
                # them all, as lm-eval's hf backend does; each request still gets the footprint it ran with.
                inputs = self.prompts.fit_scored(context + continuation)[:-1]
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
                runs.append(shared[2])
            else:
                scoring = self._score(context, continuation)
                results.append((scoring.logprob, scoring.is_greedy))
                runs.append(scoring)
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, results[-1])
        return results, runs

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        self._refuse_agnostic(requests, "rolling log-likelihood")
        results = []
        for request, counted in zip(
            tqdm(requests, disable=disable_tqdm, desc="kvbench loglikelihood_rolling"), self.tally.counted(requests)
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
                self.tally.count(request, *scorings)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), results[-1])
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list[KVText | None] = [None] * len(requests)
        counted = self.tally.counted(requests)
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="kvbench generate_until")
        # Grouped up front from the documents alone (and a query-agnostic task without a boundary refused before
        # any work); each group's prompts are tokenized when it runs, so a 128K run holds one group's tokens.
        for group in self.prompts.groups(requests, self.query):
            prepared = [self.prompts.prepare(requests[index], self.query) for index in group]
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
                    self.tally.count(request, generation)
                results[index] = answer
                self.cache_hook.add_partial("generate_until", request.args, str(answer))
            progress.update(len(group))
        progress.close()
        return results

    def _score(self, context: list[int], continuation: list[int]):
        if len(continuation) > self.max_length:
            raise ValueError(f"a continuation of {len(continuation)} tokens exceeds max_length ({self.max_length})")
        whole = self.prompts.fit_scored(context + continuation)
        return self._timed(
            score_continuation,
            self._model,
            whole[: len(whole) - len(continuation)],
            continuation,
            self.method,
            chunk_size=self.chunk_size,
            attn=self.attn,
        )

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
        run["data"] = sources_of(run["tasks"])
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
