"""Recall: JSON KV and RULER's MK-needle, MK-UUID and MV, generated at any length with the model's tokenizer.

Formats and templates follow HELMET (json_kv from "lost in the middle"; RULER's niah_multikey_2/3 and
niah_multivalue). HELMET's own files are read instead when they are in the data directory.
RULER draws keys from an English word list and MV's haystack from essays; neither can ship offline,
so keys are pronounceable pseudo-words and MV's haystack is RULER's repeated "noise" text.
"""

from __future__ import annotations

import json
import random
import uuid

from kvbench.data import common

GEN_TOKENS = {"json_kv": 100, "ruler_mk_needle": 50, "ruler_mk_uuid": 100, "ruler_mv": 50}  # HELMET's
JSON_KV_SHOTS = 2
JSON_KV_FILES = ["50", "105", "220", "440", "900", "1800"]  # HELMET's k per length (4K..128K)
RULER_FOLDERS = {"ruler_mk_needle": "niah_multikey_2", "ruler_mk_uuid": "niah_multikey_3", "ruler_mv": "niah_multivalue"}
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

JSON_KV_USER = ("{context}\n\nExtract the value corresponding to the specified key in the JSON object below.\n\n"
                "{demos}Key: {question}")
JSON_KV_SYSTEM = "Corresponding value:"
NIAH_USER = ("A special magic {kind} is hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the {kind} afterwards.\n{context}\n"
             "What is the special magic {kind} for {query} mentioned in the provided text?")
NIAH_SYSTEM = "The special magic {kind} for {query} mentioned in the provided text is"
MV_USER = ("Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
           "I will quiz you about the {kind} afterwards.\n{context}\n"
           "What are all the special magic {kind} for {query} mentioned in the provided text?")
MV_SYSTEM = "The special magic {kind} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic {kind} for {key} is: {value}."

_ONSETS = "b c d f g h k l m n p r s t v z".split()
_VOWELS = "a e i o u".split()


def pseudo_word(rng: random.Random, syllables: int = 3) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))


def _unique(rng: random.Random, make, n: int, exclude=()) -> list[str]:
    seen, out = set(exclude), []
    while len(out) < n:
        item = make(rng)
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _word_key(rng: random.Random) -> str:
    return f"{pseudo_word(rng, 2)}-{pseudo_word(rng, 3)}"


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))  # RULER's 7-digit values


# --- prompts -------------------------------------------------------------------------------------------

def json_kv_prompt(context: str, question: str, demos: list[list[str]], shots: int = JSON_KV_SHOTS) -> str:
    demo_text = "\n\n".join(f"Key: {k}\n{JSON_KV_SYSTEM} {v}" for k, v in demos[:shots])
    demo_text += "\n\n" if shots > 0 and demos else ""
    return JSON_KV_USER.format(context=context, demos=demo_text, question=question) + "\n" + JSON_KV_SYSTEM


def niah_prompt(task: str, context: str, query: str, kind: str) -> str:
    user, system = (MV_USER, MV_SYSTEM) if task == "ruler_mv" else (NIAH_USER, NIAH_SYSTEM)
    return user.format(kind=kind, context=context, query=query) + "\n" + system.format(kind=kind, query=query)


# --- generators ----------------------------------------------------------------------------------------

def _json_kv_sample(s: common.Settings, rng: random.Random, budget: int) -> dict:
    # Enough records for any tokenizer: a record is at least ~20 tokens, so length/8 is plenty.
    n = max(16, s.length // 8)
    keys, values = _unique(rng, _uuid, n), _unique(rng, _uuid, n)
    records = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in zip(keys, values)]
    target_slot = rng.random()  # where the asked record sits, as a share of the records that fit
    demos_idx = rng.sample(range(1, 8), JSON_KV_SHOTS)

    def layout(fitted: list[str]) -> tuple[str, int]:
        return "JSON data:\n{" + ", ".join(fitted) + "}", min(int(target_slot * len(fitted)), max(len(fitted) - 1, 0))

    def render(fitted: list[str]) -> str:
        context, target = layout(fitted)
        demos = [[json.dumps(keys[(target + d) % max(len(fitted), 1)]), values[(target + d) % max(len(fitted), 1)]]
                 for d in demos_idx]
        return json_kv_prompt(context, json.dumps(keys[target]), demos)

    prompt, n = common.fill(s.tokenizer, render, records, budget)
    _, target = layout(records[:n])
    return {"prompt": prompt, "answers": [values[target]]}


def _niah_sample(task: str, s: common.Settings, rng: random.Random, budget: int) -> dict:
    kind = "uuids" if task == "ruler_mk_uuid" else "numbers"
    make_key, make_value = (_uuid, _uuid) if task == "ruler_mk_uuid" else (_word_key, _number)
    n = max(16, s.length // 8)
    query = make_key(rng)
    golds = _unique(rng, make_value, 4 if task == "ruler_mv" else 1)
    if task == "ruler_mv":
        # MV: the needles hide in a filler haystack; all four values belong to the one key.
        haystack = [NOISE] * n
        needles = [NEEDLE.format(kind=kind, key=query, value=v) for v in golds]
    else:
        # MK: the haystack is made of needles with other keys (RULER's "needle" haystack).
        keys = _unique(rng, make_key, n, exclude={query})
        haystack = [NEEDLE.format(kind=kind, key=k, value=make_value(rng)) for k in keys]
        needles = [NEEDLE.format(kind=kind, key=query, value=golds[0])]
    depths = sorted(rng.random() for _ in needles)

    def render(fitted: list[str]) -> str:
        # The needles are always there; only the haystack grows. Each goes at its depth of what fits.
        sentences = list(fitted)
        for depth, needle in zip(reversed(depths), reversed(needles)):
            sentences.insert(int(depth * len(fitted)), needle)
        return niah_prompt(task, " ".join(sentences), query, kind)

    return {"prompt": common.fill(s.tokenizer, render, haystack, budget)[0], "answers": golds}


def generate(task: str, s: common.Settings) -> list[dict]:
    budget = s.length - GEN_TOKENS[task]
    rows = []
    for i in range(s.num_samples):
        rng = random.Random(common.rng_seed(task, s.seed, s.length, i))
        sample = _json_kv_sample(s, rng, budget) if task == "json_kv" else _niah_sample(task, s, rng, budget)
        rows.append({**sample, "metric": "substring_exact_match" if task == "json_kv" else "ruler_recall"})
    return rows


# --- HELMET's files ------------------------------------------------------------------------------------

def helmet_file(task: str, length: int) -> str | None:
    if length not in common.HELMET_LENGTHS:
        return None
    if task == "json_kv":
        return f"json_kv/test_k{JSON_KV_FILES[common.HELMET_LENGTHS.index(length)]}_dep6.jsonl"
    return f"ruler/{RULER_FOLDERS[task]}/validation_{length}.jsonl"


def read_helmet(task: str, s: common.Settings, path) -> list[dict]:
    """HELMET's preprocessed files: json_kv rows have context/question/answer/demos; RULER rows
    context/query/outputs (or answer)/type_needle_v. HELMET samples 100 of them with its seed."""
    from kvbench.data.helmet import read_jsonl, sample_rows

    budget = s.length - GEN_TOKENS[task]
    rows = []
    for row in sample_rows(read_jsonl(path), s.num_samples, s.seed):
        if task == "json_kv":
            render = lambda ctx, r=row: json_kv_prompt(ctx, r["question"], r.get("demos") or [])  # noqa: E731
            answers = [row["answer"]] if isinstance(row["answer"], str) else list(row["answer"])
            metric = "substring_exact_match"
        else:
            render = lambda ctx, r=row: niah_prompt(task, ctx, r["query"], r["type_needle_v"])  # noqa: E731
            answers = list(row.get("outputs") or row["answer"])
            metric = "ruler_recall"
        prompt = common.truncate_context(s.tokenizer, render, row["context"], budget)
        rows.append({"prompt": prompt, "answers": answers, "metric": metric})
    return rows


def build(task: str, **settings) -> dict:
    """lm-eval's custom_dataset for a recall task: HELMET's file when present, else generated."""
    s = common.settings(settings)
    relative = helmet_file(task, s.length)
    root = s.data_dir or common.default_root()
    path = next((p for p in (root / "data" / str(relative), root / str(relative)) if relative and p.exists()), None)
    rows = read_helmet(task, s, path) if path else generate(task, s)
    return common.to_dataset([{**r, "task": task, "length": s.length} for r in rows])
