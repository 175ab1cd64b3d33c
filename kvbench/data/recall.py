"""Recall from HELMET's files: JSON KV and RULER's MK-needle, MK-UUID and MV (HELMET's niah_multikey_2/3 and
niah_multivalue), with HELMET's templates, its sample draw (the rows permuted with the seed, the first
`num_samples` kept) and its truncation (the end of the context is cut when a tokenizer needs more tokens).

Without HELMET's files a recall task fails, as RAG, re-rank and ICL do: a number that silently came from other
data would not be comparable. The generated variants are their own tasks (kvbench.data.ruler, kvbench_gen_*).
"""

from __future__ import annotations

from kvbench.data import common, sampling

GEN_TOKENS = {"json_kv": 100, "ruler_mk_needle": 50, "ruler_mk_uuid": 100, "ruler_mv": 50}  # HELMET's
JSON_KV_SHOTS = 2
JSON_KV_FILES = ["50", "105", "220", "440", "900", "1800"]  # HELMET's k per length (4K..128K)
RULER_FOLDERS = {
    "ruler_mk_needle": "niah_multikey_2",
    "ruler_mk_uuid": "niah_multikey_3",
    "ruler_mv": "niah_multivalue",
}
GENERATED = {
    "json_kv": "kvbench_gen_json_kv",
    "ruler_mk_needle": "kvbench_gen_ruler_mk_needle",
    "ruler_mk_uuid": "kvbench_gen_ruler_mk_uuid",
    "ruler_mv": "kvbench_gen_ruler_mv",
}

JSON_KV_USER = (
    "{context}\n\nExtract the value corresponding to the specified key in the JSON object below.\n\n"
    "{demos}Key: {question}"
)
JSON_KV_SYSTEM = "Corresponding value:"
# RULER's templates as HELMET renders them: one needle per query ("A ... is") or several ("Some ... are").
NIAH_USER = (
    "A special magic {kind} is hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards.\n{context}\n"
    "What is the special magic {kind} for {query} mentioned in the provided text?"
)
NIAH_SYSTEM = "The special magic {kind} for {query} mentioned in the provided text is"
MV_USER = (
    "Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards.\n{context}\n"
    "What are all the special magic {kind} for {query} mentioned in the provided text?"
)
MV_SYSTEM = "The special magic {kind} for {query} mentioned in the provided text are"


def json_kv_template(question: str, demos: list[list[str]], shots: int = JSON_KV_SHOTS) -> common.Template:
    demo_text = "\n\n".join(f"Key: {k}\n{JSON_KV_SYSTEM} {v}" for k, v in demos[:shots])
    demo_text += "\n\n" if shots > 0 and demos else ""
    prefix, suffix = JSON_KV_USER.format(context="\0", demos=demo_text, question=question).split("\0")
    return common.Template(prefix, suffix + "\n" + JSON_KV_SYSTEM)


def niah_template(task: str, query: str, kind: str) -> common.Template:
    """`kind` as RULER's files carry it (type_needle_v): singular for one needle ("number"), plural for several."""
    user, system = (MV_USER, MV_SYSTEM) if task == "ruler_mv" else (NIAH_USER, NIAH_SYSTEM)
    prefix, suffix = user.format(kind=kind, context="\0", query=query).split("\0")
    return common.Template(prefix, suffix + "\n" + system.format(kind=kind, query=query))


def helmet_file(task: str, length: int) -> str:
    if task == "json_kv":
        return f"json_kv/test_k{JSON_KV_FILES[common.HELMET_LENGTHS.index(length)]}_dep6.jsonl"
    return f"ruler/{RULER_FOLDERS[task]}/validation_{length}.jsonl"


def read_helmet(task: str, s: common.Settings) -> list[dict]:
    """HELMET's preprocessed files: json_kv rows have context/question/answer/demos; RULER rows
    context/query/outputs (or answer)/type_needle_v."""
    from kvbench.data.helmet import read_rows, record_files

    common.helmet_length(s, task)
    relative = helmet_file(task, s.length)
    root = common.data_dir(s, task, GENERATED[task], relative)
    budget = s.length - GEN_TOKENS[task]
    rows = []
    for line, row in sampling.shuffled_head(read_rows(root, relative), s.num_samples, s.seed):
        if task == "json_kv":
            template = json_kv_template(row["question"], row.get("demos") or [])
            answers = [row["answer"]] if isinstance(row["answer"], str) else list(row["answer"])
            metric, prefix = "substring_exact_match", JSON_KV_SYSTEM
        else:
            template = niah_template(task, row["query"], row["type_needle_v"])
            answers = list(row.get("outputs") or row["answer"])
            metric, prefix = "ruler_recall", ""
        prompt = common.truncate_context(s.tokenizer, template, row["context"], budget)
        rows.append(
            {
                "prompt": prompt,
                "template": template,
                "answers": answers,
                "metric": metric,
                "answer_prefix": prefix,
                "sample_line": line,
            }
        )
    record_files(task, s, root, relative)
    return rows


def build(task: str, **settings) -> dict:
    """lm-eval's custom_dataset for a recall task: HELMET's file, or a clear error saying how to get it."""
    s = common.settings(settings, lengths=common.HELMET_LENGTHS)
    return common.to_dataset([{**r, "task": task, "length": s.length} for r in read_helmet(task, s)])
