"""RAG, re-rank and ICL from HELMET's released files (its `data.tar.gz` layout) in a local data directory.

Files per length follow HELMET's configs: the number of passages (k) grows with the length, and
HELMET cuts the end of the context when a tokenizer makes the prompt longer than the length allows.
Samples and demonstrations are drawn as HELMET draws them (kvbench.data.sampling), so a run evaluates
the questions HELMET evaluates. ICL data is not in HELMET's archive (HELMET loads it from the Hub);
`kvbench data fetch` writes it as icl/<name>/{train,test}.jsonl with fields `text` and `label` (an
integer class id), in the Hub datasets' row order.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from kvbench.data import common, sampling
from kvbench.data.fetch import sha256_of

# --- RAG (KILT passages) ---------------------------------------------------------------------------------

RAG_GEN_TOKENS = 20
RAG_SHOTS = 2
RAG_K = ["20", "50", "105", "220", "440", "1000"]  # passages per length, 4K..128K
RAG_FILES = {  # task: (test file pattern, demo file)
    "kilt_nq": ("kilt/nq-dev-multikilt_1000_k{k}_dep6.jsonl", "kilt/nq-train-multikilt_1000_k3_dep6.jsonl"),
    "kilt_triviaqa": (
        "kilt/triviaqa-dev-multikilt_1000_k{k}_dep6.jsonl",
        "kilt/triviaqa-train-multikilt_1000_k3_dep6.jsonl",
    ),
    "kilt_hotpotqa": (
        "kilt/hotpotqa-dev-multikilt_1000_k{k}_dep3.jsonl",
        "kilt/hotpotqa-train-multikilt_1000_k3_dep3.jsonl",
    ),
    "kilt_popqa": ("kilt/popqa_test_1000_k{k}_dep6.jsonl", "kilt/popqa_test_1000_k3_dep6.jsonl"),
}
POPQA_MAX_LOG_POPULARITY = 3  # HELMET's kilt_popqa_3: only questions about less popular entities
RAG_USER = (
    "Use the given documents to write a concise and short answer to the question. "
    "Write your answer in the following format:\nAnswer: [answer]\n\n{demos}{context}\n\nQuestion: {question}"
)
RAG_SYSTEM = "Answer:"
PASSAGE = "Document (Title: {title}): {text}"


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_rows(root: Path, relative: str) -> list[sampling.Row]:
    return sampling.numbered(read_jsonl(root / relative))


def record_files(task: str, s: common.Settings, root: Path, *relative: str) -> None:
    """Which of HELMET's files the task ran on, with their SHA-256, and at which length (written into every
    results file)."""
    common.record_source(
        task,
        data="helmet",
        data_dir=str(root),
        context_length=s.length,
        files={name: sha256_of(root / name) for name in relative},
    )


def _template(user: str, system: str, **fields) -> common.Template:
    prefix, suffix = user.format(context="\0", **fields).split("\0")
    return common.Template(prefix, suffix + "\n" + system)


def rag_template(question: str, demos: list[dict]) -> common.Template:
    demo_text = "".join(
        "\n\n".join(PASSAGE.format(**c) for c in d["ctxs"])
        + f"\n\nQuestion: {d['question']}\nAnswer: {d['answers'][0]}\n\n"
        for d in demos
    )
    return _template(RAG_USER, RAG_SYSTEM, demos=demo_text, question=question)


def low_popularity(rows: list[sampling.Row]) -> list[sampling.Row]:
    """PopQA as HELMET's kilt_popqa_3: questions about entities with log10(popularity) below 3."""
    return [(line, row) for line, row in rows if math.log10(max(row["s_pop"], 1)) < POPQA_MAX_LOG_POPULARITY]


def build_rag(task: str, s: common.Settings) -> list[dict]:
    test_pattern, demo_file = RAG_FILES[task]
    test_file = test_pattern.format(k=RAG_K[common.helmet_length(s, task)])
    root = common.data_dir(s, task, "kvbench_synth_rag", test_file)
    rows, pool = read_rows(root, test_file), read_rows(root, demo_file)
    popqa = task == "kilt_popqa"
    if popqa:
        rows, pool = low_popularity(rows), low_popularity(pool)
    out = []
    for (line, row), demos in sampling.rag_draw(rows, pool, s.num_samples, RAG_SHOTS, s.seed, exclude_own=popqa):
        template = rag_template(row["question"], [d for _, d in demos])
        context = "\n\n".join(PASSAGE.format(**c) for c in row["ctxs"])
        out.append(
            {
                "prompt": common.truncate_context(s.tokenizer, template, context, s.length - RAG_GEN_TOKENS),
                "template": template,
                "answers": list(row["answers"]),
                "metric": "substring_exact_match",
                "answer_prefix": RAG_SYSTEM,
                "sample_line": line,
                "demo_lines": [d for d, _ in demos],
            }
        )
    record_files(task, s, root, test_file, demo_file)
    return out


# --- re-rank (MS MARCO) ----------------------------------------------------------------------------------

RERANK_GEN_TOKENS = 200
RERANK_SHOTS = 2
RERANK_K = ["14", "50", "130", "285", "600", "1000"]
RERANK_FILE = "msmarco/test_reranking_data_k{k}_dep3.jsonl"
RERANK_DEMO_FILE = "msmarco/test_reranking_data_k10_dep3.jsonl"
RERANK_USER = (
    "You are provided with a list of documents, each indicated by their ID. Rank each document based on "
    "their relevance to the question in descending order from most relelvant to least relevant texts. "
    "Include all documents in the rankings. Write your answer using the unique IDs, with the following "
    "format:\nRanking: ID3 > ID1 > ID2\n\n{demos}{context}\n\nQuery: {question}"
)  # HELMET's typo kept
RERANK_SYSTEM = "Ranking:"


def rerank_passages(ctxs: list[dict]) -> str:
    return "\n\n".join(
        (
            f"[ID: {c['id']}] Document (Title: {c['title']}): {c['text']}"
            if "title" in c
            else f"[ID: {c['id']}] Document: {c['text']}"
        )
        for c in ctxs
    )


def gold_ranking(ctxs: list[dict]) -> str:
    return " > ".join(str(c["id"]) for c in sorted(ctxs, key=lambda c: c["label"], reverse=True))


def rerank_template(query: str, demos: list[dict]) -> common.Template:
    demo_text = "".join(
        f"{rerank_passages(d['ctxs'])}\n\nQuery: {d['query']}\nRanking: {gold_ranking(d['ctxs'])}\n\n" for d in demos
    )
    return _template(RERANK_USER, RERANK_SYSTEM, demos=demo_text, question=query)


def build_rerank(task: str, s: common.Settings) -> list[dict]:
    test_file = RERANK_FILE.format(k=RERANK_K[common.helmet_length(s, task)])
    root = common.data_dir(s, task, "kvbench_synth_rerank", test_file)
    rows, pool = read_rows(root, test_file), read_rows(root, RERANK_DEMO_FILE)
    out = []
    for (line, row), demos in sampling.rerank_draw(rows, pool, s.num_samples, RERANK_SHOTS, s.seed):
        template = rerank_template(row["query"], [d for _, d in demos])
        prompt = common.truncate_context(
            s.tokenizer, template, rerank_passages(row["ctxs"]), s.length - RERANK_GEN_TOKENS
        )
        # Graded labels of every passage, also those truncated away: missing them is the model's loss.
        qrels = [f"{c['id']}:{int(c['label'])}" for c in row["ctxs"]]
        out.append(
            {
                "prompt": prompt,
                "template": template,
                "answers": [gold_ranking(row["ctxs"])],
                "qrels": qrels,
                "metric": "ndcg_at_10",
                "sample_line": line,
                "demo_lines": [d for d, _ in demos],
            }
        )
    record_files(task, s, root, test_file, RERANK_DEMO_FILE)
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
ICL_USER = (
    "Use the provided mapping from the text to label to assign a label to the text. "
    'Only output "label: {{label}}" and nothing else. \n\n{context}\n\n{question}'
)
ICL_SYSTEM = "label:"


def icl_template(question: str) -> common.Template:
    return _template(ICL_USER, ICL_SYSTEM, question=question)


def build_icl(task: str, s: common.Settings) -> list[dict]:
    name = task.removeprefix("icl_")
    shots = ICL_SHOTS[task][common.helmet_length(s, task)]
    train_file, test_file = f"icl/{name}/train.jsonl", f"icl/{name}/test.jsonl"
    root = common.data_dir(s, task, "kvbench_synth_icl", test_file)
    train, test = read_rows(root, train_file), read_rows(root, test_file)
    out = []
    for (line, row), demos, mapping in sampling.icl_draw(
        train, test, sampling.ICL_NUM_LABELS[name], shots, s.num_samples, s.seed
    ):
        # Labels are shown as shuffled integers, so the model must learn the mapping from the demos (HELMET's).
        context = "\n\n".join(f"{d['text']}\nlabel: {mapping[int(d['label'])]}" for _, d in demos)
        template = icl_template(row["text"])
        out.append(
            {
                "prompt": common.truncate_context(s.tokenizer, template, context, s.length - ICL_GEN_TOKENS),
                "template": template,
                "answers": [str(mapping[int(row["label"])])],
                "metric": "label_accuracy",
                "sample_line": line,
                "demo_lines": [d for d, _ in demos],
            }
        )
    record_files(task, s, root, train_file, test_file)
    return out


BUILDERS = {**{t: build_rag for t in RAG_FILES}, "msmarco_rerank": build_rerank, **{t: build_icl for t in ICL_SHOTS}}


def build(task: str, **settings) -> dict:
    """lm-eval's custom_dataset for a data-backed task. RAG, re-rank and ICL stop at a generated newline token,
    as HELMET's configs for them do (stop_new_line)."""
    s = common.settings(
        settings, default_samples=ICL_SAMPLES if task in ICL_SHOTS else 100, lengths=common.HELMET_LENGTHS
    )
    rows = BUILDERS[task](task, s)
    return common.to_dataset([{**r, "task": task, "length": s.length, "stop_at_newline_token": True} for r in rows])
