"""The samples and demonstrations of every HELMET task are the ones HELMET's own loaders draw from the same files.

tests/helmet_reference_files.py writes small files in HELMET's layout (field names as its released files);
tests/data/helmet_draws/expected_ids.json holds what HELMET's loaders (princeton-nlp/HELMET at 4526dfb, data.py,
run outside this repository with seed 42, 100 samples, ICL 500, 2 shots) drew from them: 0-based line numbers of
the evaluated samples in evaluation order and of each sample's demos. See tests/data/README.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from helmet_reference_files import write_all

from kvbench.data import sampling
from kvbench.data.helmet import POPQA_MAX_LOG_POPULARITY, read_jsonl

EXPECTED = json.loads((Path(__file__).parent / "data" / "helmet_draws" / "expected_ids.json").read_text())["tasks"]
SEED = 42


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("helmet_reference")
    write_all(str(folder))
    return folder


def rows(root, relative):
    return sampling.numbered(read_jsonl(root / relative))


def lines(drawn):
    return [line for line, _ in drawn]


@pytest.mark.parametrize("task", ["ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv", "json_kv"])
def test_recall_samples(root, task):
    expected = EXPECTED[task]
    drawn = sampling.shuffled_head(rows(root, expected["call"]["path"]), 100, SEED)
    assert lines(drawn) == expected["sample_lines"]


@pytest.mark.parametrize("task", ["kilt_nq", "kilt_triviaqa", "kilt_hotpotqa", "kilt_popqa_3"])
def test_rag_samples_and_demos(root, task):
    expected = EXPECTED[task]
    test, demos = rows(root, expected["call"]["path"]), rows(root, expected["call"]["demo_path"])
    popqa = task == "kilt_popqa_3"
    if popqa:
        keep = lambda r: math.log10(r[1]["s_pop"]) < POPQA_MAX_LOG_POPULARITY  # noqa: E731
        test, demos = list(filter(keep, test)), list(filter(keep, demos))
    drawn = sampling.rag_draw(test, demos, 100, 2, SEED, exclude_own=popqa)
    assert [line for (line, _), _ in drawn] == expected["sample_lines"]
    assert [lines(chosen) for _, chosen in drawn] == expected["demo_lines"]
    assert len(drawn) > 100  # repeated keys keep every row, as HELMET does


@pytest.mark.parametrize("task", ["msmarco_rerank_psg", "msmarco_rerank_psg@bigdemo"])
def test_rerank_samples_and_demos(root, task):
    expected = EXPECTED[task]
    test, demos = rows(root, expected["call"]["path"]), rows(root, expected["call"]["demo_path"])
    drawn = sampling.rerank_draw(test, demos, 100, 2, SEED)
    assert [line for (line, _), _ in drawn] == expected["sample_lines"]
    assert [lines(chosen) for _, chosen in drawn] == expected["demo_lines"]


def icl_digest(drawn) -> tuple[list, str]:
    """The per-sample record the reference digest was taken over: line, answer, demo lines, and the mapping of
    every label seen (in the demos or the answer)."""
    per = []
    for (line, row), demos, mapping in drawn:
        seen = {str(demo["label"]): str(mapping[demo["label"]]) for _, demo in demos}
        seen[str(row["label"])] = str(mapping[row["label"]])
        per.append(
            {
                "line": line,
                "answer": str(mapping[row["label"]]),
                "demos": lines(demos),
                "map": dict(sorted(seen.items(), key=lambda kv: int(kv[0]))),
            }
        )
    return per, hashlib.sha256(json.dumps(per, separators=(",", ":"), sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("task", [t for t in EXPECTED if t.startswith("icl_")])
def test_icl_samples_demos_and_label_mappings(root, task):
    expected = EXPECTED[task]
    call = expected["call"]
    name = expected["test_file"].split("/")[1]
    drawn = sampling.icl_draw(
        rows(root, expected["train_file"]),
        rows(root, expected["test_file"]),
        sampling.ICL_NUM_LABELS[name],
        call["shots"],
        call["max_test_sample"],
        SEED,
    )
    per, digest = icl_digest(drawn)
    assert [p["line"] for p in per] == expected["sample_lines"]
    assert per[:5] == expected["first5"]
    assert digest == expected["per_sample_sha256"]
