"""Small files in the layout of HELMET's released data (`data/...`, field names as HELMET's files), for every
HELMET task kvbench runs, built here so that no test downloads anything."""

from __future__ import annotations

import json
import random
from pathlib import Path

from kvbench.data import common, helmet, recall

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_helmet_data(root: Path, lengths=(4096, 16384), rows: int = 3) -> Path:
    """HELMET's `data/` tree under `root` for `lengths`: kilt, msmarco, json_kv, ruler, and icl (as `kvbench data
    fetch` writes it). Returns `root`, the value of --metadata data_dir."""
    data, rng = root / "data", random.Random(0)
    indexes = [common.HELMET_LENGTHS.index(length) for length in lengths]
    for task, (test, demo) in helmet.RAG_FILES.items():
        for k in (helmet.RAG_K[i] for i in indexes):
            write_jsonl(
                data / test.format(k=k),
                [
                    {
                        "id": f"{task}-{i}",
                        "question": f"question {i} of {task}?",
                        "answers": [f"answer{i}"],
                        "s_pop": 10,
                        "ctxs": [{"title": f"T{i}.{j}", "text": _text(rng, 60)} for j in range(int(k))],
                    }
                    for i in range(rows)
                ],
            )
        write_jsonl(
            data / demo,
            [
                {
                    "id": f"demo-{i}",
                    "question": f"demo question {i}?",
                    "answers": [f"demo{i}"],
                    "s_pop": 10,
                    "ctxs": [{"title": "D", "text": _text(rng, 20)} for _ in range(3)],
                }
                for i in range(5)
            ],
        )
    for k in (helmet.RERANK_K[i] for i in indexes):
        write_jsonl(
            data / helmet.RERANK_FILE.format(k=k),
            [
                {
                    "qid": f"q{i}",
                    "query": f"query {i}",
                    "ctxs": [
                        {"id": str(j), "text": _text(rng, 60), "label": [3, 2, 1, 0][j % 4]} for j in range(int(k))
                    ],
                }
                for i in range(rows)
            ],
        )
    write_jsonl(
        data / helmet.RERANK_DEMO_FILE,
        [
            {
                "qid": f"d{i}",
                "query": f"demo {i}",
                "ctxs": [{"id": str(j), "text": _text(rng, 12), "label": j % 2} for j in range(10)],
            }
            for i in range(5)
        ],
    )
    for task in helmet.ICL_SHOTS:
        name = task.removeprefix("icl_")
        write_jsonl(data / f"icl/{name}/train.jsonl", [{"text": _text(rng, 10), "label": i % 6} for i in range(120)])
        write_jsonl(
            data / f"icl/{name}/test.jsonl", [{"text": f"test text {i}", "label": i % 6} for i in range(max(rows, 6))]
        )
    for length in lengths:
        records = ", ".join(f'"k{i}": "v{i}"' for i in range(length // 4))
        write_jsonl(
            data / recall.helmet_file("json_kv", length),
            [
                {
                    "context": "JSON data:\n{" + records + "}",
                    "question": f'"k{7 + i}"',
                    "answer": f"v{7 + i}",
                    "demos": [['"k1"', "v1"], ['"k2"', "v2"]],
                }
                for i in range(rows)
            ],
        )
        for task in recall.RULER_FOLDERS:
            kind = "uuids" if task == "ruler_mk_uuid" else "numbers"
            write_jsonl(
                data / recall.helmet_file(task, length),
                [
                    {
                        "context": _text(rng, length // 2),
                        "query": f"key-{i}",
                        "outputs": [f"{1000000 + i}"],
                        "type_needle_v": kind,
                    }
                    for i in range(rows)
                ],
            )
    return root
