"""What every task generator shares: the settings lm-eval hands it, the tokenizer, fitting a prompt to a length.

lm-eval calls a task's `custom_dataset` with the task's metadata merged with `--model_args` and
`--metadata`, so every generator takes `**settings` and reads the keys below from it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import datasets

from kvbench.settings import DEFAULT_CONTEXT_LENGTH

LENGTH_KEY = "context_length"  # the ONE key that picks the length: --metadata '{"context_length": 16384}'
DEFAULT_LENGTH = DEFAULT_CONTEXT_LENGTH  # the paper reports 128K
HELMET_LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072)  # the lengths HELMET's files were built for
DATA_DIR_ENV = "KVBENCH_DATA_DIR"
DEFAULT_DATA_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvbench" / "helmet"

# One schema for every task, so that lm-eval's YAML (doc_to_text etc.) is the same everywhere.
# qrels: graded relevance as "id:label" pairs, only for re-ranking.
# context_start/context_end: the context's character span in the prompt (before it: the instruction and any
# demonstrations; after it: the question), so that a backend can shorten the context and nothing else.
# sample_line/demo_lines: lines of the sample and of its demonstrations in HELMET's files (-1/[] when generated).
# answer_prefix: the prefix HELMET's metric also parses the answer after ("Answer:"), "" for none.
# stop_at_newline_token: HELMET stops this task's generation at a generated newline token (not at a "\n" inside
# a longer token) and scores the whole output; the kvbench backend does the same (other backends cut at "\n").
# context_group: documents with the same non-empty group share one context and ask different questions of it
# (multi-question tasks); query-agnostic, the kvbench backend prefills and evicts that context once for them.
FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")),
        "qrels": datasets.Sequence(datasets.Value("string")),
        "metric": datasets.Value("string"),
        "task": datasets.Value("string"),
        "length": datasets.Value("int64"),
        "context_start": datasets.Value("int64"),
        "context_end": datasets.Value("int64"),
        "sample_line": datasets.Value("int64"),
        "demo_lines": datasets.Sequence(datasets.Value("int64")),
        "answer_prefix": datasets.Value("string"),
        "stop_at_newline_token": datasets.Value("bool"),
        "context_group": datasets.Value("string"),
    }
)


@dataclass(frozen=True)
class Template:
    """A prompt is prefix + context + suffix: instruction (and demonstrations) before the context, question after."""

    prefix: str
    suffix: str

    def __call__(self, context: str) -> str:
        return self.prefix + context + self.suffix


# Which data each task was built from, by lm-eval task name (the last build wins: it is the one that runs). The
# kvbench backend writes the entries of the tasks it ran into every results file (config.kvbench.data). Kept here
# because lm-eval builds a task's documents without telling the backend anything but the documents; read and
# written through the two functions below only.
_SOURCES: dict[str, dict] = {}


def record_source(task: str, **source) -> None:
    _SOURCES[f"kvbench_{task}"] = dict(source)


def sources_of(tasks) -> dict[str, dict]:
    """The recorded data source of each of `tasks` that has one (copies: a caller cannot change the record)."""
    return {task: dict(_SOURCES[task]) for task in tasks if task in _SOURCES}


@dataclass(frozen=True)
class Settings:
    length: int
    seed: int
    num_samples: int
    tokenizer: object
    data_dir: Path | None


def settings(settings: dict, default_samples: int = 100, lengths: tuple[int, ...] | None = None) -> Settings:
    """The task's settings. Without `context_length`, the length follows the evaluated model: its positions,
    capped at 128K (and, for tasks reading HELMET's files, the largest of `lengths` that fits). A length the model
    cannot hold is an error here, before any prompt is built."""
    positions = model_positions(settings)
    if LENGTH_KEY in settings:
        length = positive_int(settings, LENGTH_KEY, DEFAULT_LENGTH)
    else:
        length = min(positions or DEFAULT_LENGTH, DEFAULT_LENGTH)
        if lengths:
            length = max([n for n in lengths if n <= length], default=min(lengths))
    if length < 1024:
        raise ValueError(f"{LENGTH_KEY}={length} is too short for a long-context task; use 1024 tokens or more")
    if positions is not None and length > positions:
        raise ValueError(
            f"{LENGTH_KEY}={length}, but {settings.get('pretrained')} holds {positions} positions "
            f"(max_position_embeddings); pass --metadata '{{\"{LENGTH_KEY}\": {positions}}}' or less"
        )
    return Settings(
        length=length,
        seed=positive_int(settings, "seed", 42, allow_zero=True),
        num_samples=positive_int(settings, "num_samples", default_samples),
        tokenizer=load_tokenizer(settings),
        data_dir=Path(settings["data_dir"]) if settings.get("data_dir") else None,
    )


def positive_int(settings: dict, key: str, default: int, allow_zero: bool = False) -> int:
    value = settings.get(key, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--metadata key {key!r} must be an integer; got {value!r}") from None
    if number < 0 or (number == 0 and not allow_zero):
        raise ValueError(f"--metadata key {key!r} must be positive; got {number}")
    return number


def model_positions(settings: dict) -> int | None:
    """The evaluated model's max_position_embeddings (from `pretrained`'s config), or None when unknown."""
    name = settings.get("pretrained")
    if not isinstance(name, str):
        return None
    from transformers import AutoConfig

    from kvbench.tiny import resolve_pretrained

    try:
        config = AutoConfig.from_pretrained(resolve_pretrained(name))
    except (OSError, ValueError):  # not loadable here: the backend says why when it loads the model
        return None
    return getattr(config, "max_position_embeddings", None)


def load_tokenizer(settings: dict):
    """The evaluated model's own tokenizer: `tokenizer` if given, else `pretrained` (both from --model_args)."""
    name = settings.get("tokenizer") or settings.get("pretrained")
    if not name:
        raise ValueError(
            "kvbench tasks measure lengths with the evaluated model's tokenizer, but neither `pretrained` nor "
            "`tokenizer` was given; pass --model_args pretrained=PATH (or tokenizer=PATH)"
        )
    if not isinstance(name, str):
        return name  # an already-loaded tokenizer (Python callers, tests)
    from transformers import AutoTokenizer

    from kvbench.tiny import resolve_pretrained  # "kvbench-tiny" is the bundled checkpoint

    return AutoTokenizer.from_pretrained(resolve_pretrained(name))


def count_tokens(tokenizer, text: str) -> int:
    # With special tokens: a backend that adds BOS must still fit.
    return len(tokenizer(text)["input_ids"])


def piece_lengths(tokenizer, pieces: list[str]) -> list[int]:
    if not pieces:
        return []
    return [len(ids) for ids in tokenizer(pieces, add_special_tokens=False)["input_ids"]]


def distinct(rng, make, n: int, exclude=()) -> list:
    """n distinct values of `make(rng)`, none in `exclude`."""
    seen, out = set(exclude), []
    while len(out) < n:
        item = make(rng)
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def rng_seed(*parts) -> int:
    """A seed derived from strings/ints, stable across runs and Python versions (hash() is not)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest, 16) % 2**31


def fill(tokenizer, render, pieces: list[str], budget: int) -> tuple[str, int]:
    """The prompt `render(pieces[:n])` with the largest n whose tokens fit in `budget`, and n.

    Pieces are counted one by one (cheap), then the whole prompt is measured once and pieces dropped
    until it truly fits, because tokens at piece boundaries do not add up exactly.
    """
    overhead = count_tokens(tokenizer, render([]))
    if overhead > budget:
        raise ValueError(
            f"the task's template alone needs {overhead} tokens, more than the {budget} available; raise {LENGTH_KEY}"
        )
    n, used = 0, overhead
    for size in piece_lengths(tokenizer, pieces):
        if used + size + 1 > budget:  # +1: the separator between pieces
            break
        used += size + 1
        n += 1
    while n > 0 and count_tokens(tokenizer, render(pieces[:n])) > budget:
        n -= max(1, n // 100)
    return render(pieces[:n]), n


def question_token(tokenizer, text: str, question_char: int, add_special_tokens: bool = True) -> tuple[list[int], int]:
    """(the tokens of `text`, the index of its question's first token), the question beginning at character
    `question_char`: the first token whose text ends after it. A token that straddles the context's end belongs to
    the question, so that a context prefilled before the question is known holds none of it."""
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    first = next((i for i, (_, end) in enumerate(encoded["offset_mapping"]) if end > question_char), None)
    if first is None:
        raise ValueError("a prompt has nothing after its context: there is no question to ask query-agnostic")
    if first == 0:
        raise ValueError("a prompt's context is empty: query-agnostic has nothing to prefill before its question")
    return encoded["input_ids"], first


def truncate_context(tokenizer, template: Template, context: str, budget: int, fix: str = LENGTH_KEY) -> str:
    """HELMET's rule for its fixed files: cut the end of the context until the prompt fits the budget."""
    prompt = template(context)
    excess = count_tokens(tokenizer, prompt) - budget
    while excess > 0:
        if not context:
            raise ValueError(f"the prompt does not fit {budget} tokens even without its context; raise {fix}")
        offsets = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        keep = max(0, len(offsets) - excess)
        context = context[: offsets[keep][0]] if keep < len(offsets) else context
        prompt = template(context)
        excess = count_tokens(tokenizer, prompt) - budget
    return prompt


def to_dataset(rows: list[dict]) -> dict[str, datasets.Dataset]:
    """What lm-eval's custom_dataset must return: {split: Dataset}. Each row's `template` (the Template its prompt
    was rendered with) gives the context's span in the prompt."""
    out = []
    for row in rows:
        row = dict(row)
        template = row.pop("template")
        prompt = row["prompt"]
        if not (prompt.startswith(template.prefix) and prompt.endswith(template.suffix)):
            raise AssertionError(f"a {row.get('task')} prompt was not rendered with its template")
        out.append(
            {
                "qrels": [],
                "sample_line": -1,
                "demo_lines": [],
                "answer_prefix": "",
                "stop_at_newline_token": False,
                "context_group": "",
                **row,
                "context_start": len(template.prefix),
                "context_end": len(prompt) - len(template.suffix),
            }
        )
    return {"test": datasets.Dataset.from_list(out, features=FEATURES)}


# --- HELMET's released files ----------------------------------------------------------------------------


def default_root() -> Path:
    return Path(os.environ[DATA_DIR_ENV]) if os.environ.get(DATA_DIR_ENV) else DEFAULT_DATA_DIR


def data_dir(settings: Settings, task: str, synthetic: str, required: str) -> Path:
    """HELMET's `data/` folder: --metadata data_dir, else $KVBENCH_DATA_DIR, else kvbench's download cache.

    Fails with what to do when the file the task needs (`required`, relative to `data/`) is missing.
    """
    root = settings.data_dir or default_root()
    for folder in (root / "data", root):  # the folder holding data/ (as unpacked) or data/ itself
        if (folder / required).exists():
            return folder
    raise FileNotFoundError(
        f"{task} reads HELMET's released data, but {required} was not found under {root}. "
        f"Fetch it with `kvbench data fetch --dest {root}` (online; then point --metadata "
        f'\'{{"data_dir": "{root}"}}\' or ${DATA_DIR_ENV} at it), or run the offline synthetic task '
        f"{synthetic} instead (--tasks {synthetic})."
    )


def helmet_length(settings: Settings, task: str) -> int:
    if settings.length not in HELMET_LENGTHS:
        raise ValueError(
            f"{task} reads HELMET's files, which exist for {LENGTH_KEY} in {list(HELMET_LENGTHS)}; "
            f"got {settings.length}. Pick one of those, or use a synthetic task (any length)."
        )
    return HELMET_LENGTHS.index(settings.length)
