"""Small offline datasets for the lm-eval backend tests (and benchmarks/lmeval_overhead.py).

lm-eval calls a task's `custom_dataset` with the task metadata merged with --model_args and
--metadata; `words` (from --metadata) sets the filler length, so the same task serves long prompts.
"""

import random

import datasets

FILLER = "The quick brown fox jumps over the lazy dog."


def _haystack(rng: random.Random, words: int, needle: str) -> str:
    sentences = [FILLER] * max(1, words // len(FILLER.split()))
    sentences.insert(rng.randrange(len(sentences) + 1), needle)
    return " ".join(sentences)


def recall_docs(words: int = 60, docs: int = 4, **_model_args_and_metadata):
    rng = random.Random(0)
    rows = []
    for _ in range(docs):
        key, value = rng.randrange(100), rng.randrange(100)
        context = _haystack(rng, int(words), f"The value of key {key} is {value}.")
        rows.append({"context": context, "question": f"What is the value of key {key}?", "answer": str(value)})
    return {"test": datasets.Dataset.from_list(rows)}


def choice_docs(words: int = 30, docs: int = 4, **_model_args_and_metadata):
    rng = random.Random(1)
    rows = []
    for i in range(docs):
        value = rng.randrange(4)
        context = _haystack(rng, int(words), f"Document {i}: the answer is {'ABCD'[value]}.")
        rows.append({"context": context, "question": f"Which letter is the answer of document {i}?", "label": value})
    return {"test": datasets.Dataset.from_list(rows)}


def recall_results(doc, results):
    """Substring match, plus the per-sample footprint the kvbench backend attaches to its answer."""
    answer = results[0]
    metrics = {"exact_match": float(doc["answer"] in answer)}
    footprint = getattr(answer, "footprint", None)
    if footprint is not None:
        metrics["sample_kv_footprint"] = footprint["kv_footprint"]
    return metrics
