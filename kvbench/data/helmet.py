"""RAG, re-rank and ICL from HELMET's released files (its `data.tar.gz` layout) in a local data directory.

Files per length follow HELMET's configs: the number of passages (k) grows with the length, and
HELMET cuts the end of the context when a tokenizer makes the prompt longer than the length allows.
ICL data is not in HELMET's archive (HELMET loads it from the Hub); `kvbench data fetch` writes it as
icl/<name>/{train,test}.jsonl with fields `text` and `label` (an integer class id).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from kvbench.data import common

# --- RAG (KILT passages) ---------------------------------------------------------------------------------

RAG_GEN_TOKENS = 20
RAG_SHOTS = 2
RAG_K = ["20", "50", "105", "220", "440", "1000"]  # passages per length, 4K..128K
RAG_FILES = {  # task: (test file pattern, demo file)
    "kilt_nq": ("kilt/nq-dev-multikilt_1000_k{k}_dep6.jsonl", "kilt/nq-train-multikilt_1000_k3_dep6.jsonl"),
    "kilt_triviaqa": ("kilt/triviaqa-dev-multikilt_1000_k{k}_dep6.jsonl",
                      "kilt/triviaqa-train-multikilt_1000_k3_dep6.jsonl"),
    "kilt_hotpotqa": ("kilt/hotpotqa-dev-multikilt_1000_k{k}_dep3.jsonl",
                      "kilt/hotpotqa-train-multikilt_1000_k3_dep3.jsonl"),
    "kilt_popqa": ("kilt/popqa_test_1000_k{k}_dep6.jsonl", "kilt/popqa_test_1000_k3_dep6.jsonl"),
}
POPQA_MAX_LOG_POPULARITY = 3  # HELMET's kilt_popqa_3: only questions about less popular entities
RAG_USER = ("Use the given documents to write a concise and short answer to the question. "
            "Write your answer in the following format:\nAnswer: [answer]\n\n{demos}{context}\n\nQuestion: {question}")
RAG_SYSTEM = "Answer:"
PASSAGE = "Document (Title: {title}): {text}"


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sample_rows(rows: list[dict], n: int, seed: int) -> list[dict]:
    """At most n rows, drawn with the seed (HELMET evaluates a seeded sample of 100), in file order."""
    if len(rows) <= n:
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def _demos_for(key: str, pool: list[dict], key_field: str, shots: int, seed: int) -> list[dict]:
    """`shots` demos other than the sample itself, chosen by a seed derived from the sample (stable per question)."""
    others, seen = [], {key}
    for row in pool:
        if row[key_field] not in seen:
            seen.add(row[key_field])
            others.append(row)
    return random.Random(common.rng_seed(key, seed)).sample(others, min(shots, len(others)))


def rag_prompt(question: str, context: str, demos: list[dict]) -> str:
    demo_text = "".join(
        "\n\n".join(PASSAGE.format(**c) for c in d["ctxs"]) + f"\n\nQuestion: {d['question']}\nAnswer: {d['answers'][0]}\n\n"
        for d in demos
    )
    return RAG_USER.format(demos=demo_text, context=context, question=question) + "\n" + RAG_SYSTEM


def build_rag(task: str, s: common.Settings) -> list[dict]:
    test_pattern, demo_file = RAG_FILES[task]
    test_file = test_pattern.format(k=RAG_K[common.helmet_length(s, task)])
    root = common.data_dir(s, task, "kvbench_synth_rag", test_file)
    rows, pool = read_jsonl(root / test_file), read_jsonl(root / demo_file)
    if task == "kilt_popqa":
        popular = lambda r: "s_pop" in r and math.log10(max(r["s_pop"], 1)) >= POPQA_MAX_LOG_POPULARITY  # noqa: E731
        rows, pool = [r for r in rows if not popular(r)], [r for r in pool if not popular(r)]
    key_field = "id" if rows and "id" in rows[0] else "question"
    out = []
    for row in sample_rows(rows, s.num_samples, s.seed):
        demos = _demos_for(row[key_field], pool, key_field, RAG_SHOTS, s.seed)
        render = lambda ctx, r=row, d=demos: rag_prompt(r["question"], ctx, d)  # noqa: E731
        context = "\n\n".join(PASSAGE.format(**c) for c in row["ctxs"])
        prompt = common.truncate_context(s.tokenizer, render, context, s.length - RAG_GEN_TOKENS)
        out.append({"prompt": prompt, "answers": list(row["answers"]), "metric": "substring_exact_match"})
    return out


# --- re-rank (MS MARCO) ----------------------------------------------------------------------------------

RERANK_GEN_TOKENS = 200
RERANK_SHOTS = 2
RERANK_K = ["14", "50", "130", "285", "600", "1000"]
RERANK_FILE = "msmarco/test_reranking_data_k{k}_dep3.jsonl"
RERANK_DEMO_FILE = "msmarco/test_reranking_data_k10_dep3.jsonl"
RERANK_USER = ("You are provided with a list of documents, each indicated by their ID. Rank each document based on "
               "their relevance to the question in descending order from most relelvant to least relevant texts. "
               "Include all documents in the rankings. Write your answer using the unique IDs, with the following "
               "format:\nRanking: ID3 > ID1 > ID2\n\n{demos}{context}\n\nQuery: {question}")  # HELMET's typo kept
RERANK_SYSTEM = "Ranking:"


def rerank_passages(ctxs: list[dict]) -> str:
    return "\n\n".join(
        (f"[ID: {c['id']}] Document (Title: {c['title']}): {c['text']}" if "title" in c
         else f"[ID: {c['id']}] Document: {c['text']}") for c in ctxs
    )


def gold_ranking(ctxs: list[dict]) -> str:
    return " > ".join(str(c["id"]) for c in sorted(ctxs, key=lambda c: c["label"], reverse=True))


def rerank_prompt(query: str, context: str, demos: list[dict]) -> str:
    demo_text = "".join(
        f"{rerank_passages(d['ctxs'])}\n\nQuery: {d['query']}\nRanking: {gold_ranking(d['ctxs'])}\n\n" for d in demos
    )
    return RERANK_USER.format(demos=demo_text, context=context, question=query) + "\n" + RERANK_SYSTEM


def build_rerank(task: str, s: common.Settings) -> list[dict]:
    test_file = RERANK_FILE.format(k=RERANK_K[common.helmet_length(s, task)])
    root = common.data_dir(s, task, "kvbench_synth_rerank", test_file)
    rows, pool = read_jsonl(root / test_file), read_jsonl(root / RERANK_DEMO_FILE)
    out = []
    for row in sample_rows(rows, s.num_samples, s.seed):
        demos = _demos_for(row["qid"], pool, "qid", RERANK_SHOTS, s.seed)
        render = lambda ctx, r=row, d=demos: rerank_prompt(r["query"], ctx, d)  # noqa: E731
        prompt = common.truncate_context(s.tokenizer, render, rerank_passages(row["ctxs"]), s.length - RERANK_GEN_TOKENS)
        # Graded labels of every passage, also those truncated away: missing them is the model's loss.
        qrels = [f"{c['id']}:{int(c['label'])}" for c in row["ctxs"]]
        out.append({"prompt": prompt, "answers": [gold_ranking(row["ctxs"])], "qrels": qrels, "metric": "ndcg_at_10"})
    return out


# --- ICL --------------------------------------------------------------------------------------------------

ICL_GEN_TOKENS = 20
ICL_SAMPLES = 500  # HELMET's max_test_samples for ICL
ICL_SHOTS = {  # demonstrations per length, 4K..128K (HELMET's "{shots}shot_balance" datasets)
    "icl_trec_coarse": [200, 400, 800, 1600, 3300, 6600],
    "icl_trec_fine": [200, 400, 800, 1600, 3200, 6400],
    "icl_banking77": [180, 360, 720, 1450, 2900, 5900],
    "icl_clinc150": [220, 440, 880, 1750, 3525, 7050],
    "icl_nlu": [250, 510, 1020, 2040, 4080, 8296],
}
ICL_USER = ("Use the provided mapping from the text to label to assign a label to the text. "
            "Only output \"label: {{label}}\" and nothing else. \n\n{context}\n\n{question}")
ICL_SYSTEM = "label:"


def icl_prompt(context: str, question: str) -> str:
    return ICL_USER.format(context=context, question=question) + "\n" + ICL_SYSTEM


def balanced(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    """n rows in rounds that hold every label once (random order inside a round), as HELMET's balance_labels."""
    by_label: dict[int, list[dict]] = {}
    for row in rows:
        by_label.setdefault(int(row["label"]), []).append(row)
    rounds = [[] for _ in range(math.ceil(n / len(by_label)))]
    for members in by_label.values():
        picks = rng.sample(members, min(len(rounds), len(members)))
        while len(picks) < len(rounds):  # with replacement only when a label has too few rows
            picks += rng.sample(members, min(len(rounds) - len(picks), len(members)))
        for r, row in zip(rounds, picks):
            r.append(row)
    for r in rounds:
        rng.shuffle(r)
    return [row for r in rounds for row in r][:n]


def build_icl(task: str, s: common.Settings) -> list[dict]:
    name = task.removeprefix("icl_")
    shots = ICL_SHOTS[task][common.helmet_length(s, task)]
    root = common.data_dir(s, task, "kvbench_synth_icl", f"icl/{name}/test.jsonl")
    train, test = read_jsonl(root / f"icl/{name}/train.jsonl"), read_jsonl(root / f"icl/{name}/test.jsonl")
    num_labels = 1 + max(int(r["label"]) for r in train + test)
    if len(test) > s.num_samples:
        test = balanced(test, s.num_samples, random.Random(s.seed))
    out = []
    for row in test:
        local = common.rng_seed(row["text"], s.seed)
        demos = balanced(train, shots, random.Random(local))
        # Labels become shuffled integers, so the model must learn the mapping from the demos (HELMET's default).
        mapping = list(range(num_labels))
        random.Random(local).shuffle(mapping)
        pairs = [(d["text"], str(mapping[int(d["label"])])) for d in demos]
        render = lambda ctx, q=row["text"]: icl_prompt(ctx, q)  # noqa: E731
        context = "\n\n".join(f"{text}\nlabel: {label}" for text, label in pairs)
        prompt = common.truncate_context(s.tokenizer, render, context, s.length - ICL_GEN_TOKENS)
        out.append({"prompt": prompt, "answers": [str(mapping[int(row["label"])])], "metric": "label_accuracy"})
    return out


BUILDERS = {**{t: build_rag for t in RAG_FILES}, "msmarco_rerank": build_rerank, **{t: build_icl for t in ICL_SHOTS}}


def build(task: str, **settings) -> dict:
    """lm-eval's custom_dataset for a data-backed task."""
    s = common.settings(settings, default_samples=ICL_SAMPLES if task in ICL_SHOTS else 100)
    rows = BUILDERS[task](task, s)
    return common.to_dataset([{**r, "task": task, "length": s.length} for r in rows])
