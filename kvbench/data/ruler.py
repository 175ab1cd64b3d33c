"""Generated recall, for machines without HELMET's files: JSON KV and RULER's MK-needle, MK-UUID and MV at any
length with the evaluated model's tokenizer. These are their own tasks (kvbench_gen_*), never a silent stand-in
for HELMET's: their scores are comparable with each other, not with HELMET's or the paper's.

Built as RULER builds them (NVIDIA/RULER, scripts/data/synthetic/niah.py, with HELMET's configs):
- MK-needle (niah_multikey_2): the haystack is other keys' needles, one per line; keys are adjective-noun word
  pairs (wonderwords' lists, as RULER), values 7-digit numbers; one needle per query, so the template is singular.
- MK-UUID (niah_multikey_3): the same with UUID keys and values.
- MV (niah_multivalue): four needles for one word-pair key hidden in prose at depths drawn from RULER's 40 levels,
  the sentences joined by spaces; the prose is bundled (kvbench/data/haystack/README.md), as RULER's essays cannot
  be, and repeats when a context needs more, as RULER's does.
- JSON KV (lost in the middle): UUID keys and values, one record per line; the asked record at a random depth;
  two demonstrations drawn from all the other records.
A sample fills the length with its haystack while its needles keep their relative depths.
"""

from __future__ import annotations

import gzip
import json
import random
import uuid
from functools import cache
from importlib import resources

from kvbench.data import common
from kvbench.data.recall import GEN_TOKENS, JSON_KV_SHOTS, json_kv_template, niah_template

GENERATOR_VERSION = 1  # raise when a change makes the same seed give other prompts
NEEDLE = "One of the special magic {kinds} for {key} is: {value}."
DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER's insertion depths, percent: 40 levels from 0 to 100
# (needle kind, key kind, values per key) per task, as RULER's synthetic.yaml configures them
NIAH = {
    "ruler_mk_needle": ("numbers", "words", 1),
    "ruler_mk_uuid": ("uuids", "uuids", 1),
    "ruler_mv": ("numbers", "words", 4),
}


@cache
def _word_lists() -> tuple[list[str], list[str]]:
    assets = resources.files("wonderwords") / "assets"
    lists = ((assets / f"{name}list.txt").read_text().splitlines() for name in ("adjective", "noun"))
    return tuple([word.strip() for word in words if word.strip()] for words in lists)


@cache
def prose_sentences() -> list[str]:
    with gzip.open(resources.files("kvbench.data") / "haystack" / "prose.txt.gz", "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def _make(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    adjectives, nouns = _word_lists()  # a uniform pair: RULER draws from the sorted set of all of them
    return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"


def _niah(task: str, s: common.Settings, rng: random.Random, budget: int) -> dict:
    kinds, key_kind, count = NIAH[task]
    query = _make(key_kind, rng)
    values = common.distinct(rng, lambda r: _make(kinds, r), count)
    needles = [NEEDLE.format(kinds=kinds, key=query, value=v) for v in values]
    # One needle: RULER's singular wording ("A special magic number is"); several: plural.
    template = niah_template(task, query, kinds[:-1] if count == 1 else kinds)
    if task == "ruler_mv":
        sentences = prose_sentences()
        pieces = [sentences[i % len(sentences)] for i in range(max(16, s.length // 8))]  # repeated in order if needed
        depths = sorted(rng.sample(DEPTHS, count))
        joiner = " "
    else:
        pieces = [
            NEEDLE.format(kinds=kinds, key=k, value=_make(kinds, rng))
            for k in common.distinct(rng, lambda r: _make(key_kind, r), max(16, s.length // 8), {query})
        ]
        depths = [100 * rng.random()]
        joiner = "\n"

    def render(fitted: list[str]) -> str:
        items = list(fitted)
        for depth, needle in sorted(zip(depths, needles), reverse=True):
            items.insert(int(len(fitted) * depth / 100), needle)
        return template(joiner.join(items))

    return {
        "prompt": common.fill(s.tokenizer, render, pieces, budget)[0],
        "template": template,
        "answers": values,
        "metric": "ruler_recall",
    }


def _json_kv(s: common.Settings, rng: random.Random, budget: int) -> dict:
    n = max(16, s.length // 8)
    keys, values = common.distinct(rng, lambda r: _make("uuids", r), n), [_make("uuids", rng) for _ in range(n)]
    records = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in zip(keys, values)]
    depth = rng.random()
    demo_draw = rng.getrandbits(31)

    def layout(fitted: int) -> tuple[int, list[int]]:
        target = min(int(depth * fitted), max(fitted - 1, 0))
        others = [i for i in range(max(fitted, 1)) if i != target]
        return target, random.Random(demo_draw).sample(others, min(JSON_KV_SHOTS, len(others)))

    def render(fitted: list[str]) -> str:
        target, demos = layout(len(fitted))
        template = json_kv_template(json.dumps(keys[target]), [[json.dumps(keys[d]), values[d]] for d in demos])
        return template("JSON data:\n{" + ",\n ".join(fitted) + "}")

    prompt, fitted = common.fill(s.tokenizer, render, records, budget)
    target, demos = layout(fitted)
    template = json_kv_template(json.dumps(keys[target]), [[json.dumps(keys[d]), values[d]] for d in demos])
    return {
        "prompt": prompt,
        "template": template,
        "answers": [values[target]],
        "metric": "substring_exact_match",
        "answer_prefix": "Corresponding value:",
    }


def build(task: str, **settings) -> dict:
    """lm-eval's custom_dataset for a generated recall task (gen_json_kv, gen_ruler_mk_needle, ...)."""
    name = task.removeprefix("gen_")
    s = common.settings(settings)
    rows = []
    for i in range(s.num_samples):
        rng = random.Random(common.rng_seed(task, s.seed, s.length, i))
        budget = s.length - GEN_TOKENS[name]
        sample = _json_kv(s, rng, budget) if name == "json_kv" else _niah(name, s, rng, budget)
        rows.append({**sample, "task": task, "length": s.length})
    common.record_source(
        task,
        data="generated",
        generator="kvbench.data.ruler",
        version=GENERATOR_VERSION,
        seed=s.seed,
        context_length=s.length,
    )
    return common.to_dataset(rows)
