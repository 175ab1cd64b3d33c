"""Task documents: every task at 4K and 16K fits and fills its length; seeds; HELMET's layout; missing data."""

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from checkpoints import build_tokenizer  # noqa: E402
from helmet_files import write_jsonl as _write  # noqa: E402
from helmet_files import write_helmet_data  # noqa: E402

from kvbench.data import common, helmet, recall, synth  # noqa: E402

GENERATED = {**{t: (recall.build, recall.GEN_TOKENS[t]) for t in recall.GEN_TOKENS},
             **{t: (synth.build, synth.GEN_TOKENS[t]) for t in synth.GEN_TOKENS}}
DATA_BACKED = {**{t: helmet.RAG_GEN_TOKENS for t in helmet.RAG_FILES}, "msmarco_rerank": helmet.RERANK_GEN_TOKENS,
               **{t: helmet.ICL_GEN_TOKENS for t in helmet.ICL_SHOTS}}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def helmet_dir(tmp_path_factory):
    """A small copy of HELMET's layout (data/kilt, data/msmarco, icl/, ...) with files for 4K and 16K."""
    return write_helmet_data(tmp_path_factory.mktemp("helmet"))


def _check_fit(tokenizer, docs, length, gen):
    assert len(docs) >= 1
    for doc in docs:
        used = common.count_tokens(tokenizer, doc["prompt"]) + gen
        assert 0.9 * length <= used <= length, (doc["task"], used, length)
        assert doc["answers"] and doc["length"] == length


@pytest.mark.parametrize("length", [4096, 16384])
@pytest.mark.parametrize("task", sorted(GENERATED))
def test_generated_tasks_fit_and_fill(task, length, tokenizer, tmp_path):
    build, gen = GENERATED[task]
    docs = build(task, tokenizer=tokenizer, context_length=length, num_samples=2, data_dir=tmp_path)["test"]
    _check_fit(tokenizer, docs, length, gen)
    for doc in docs:
        if doc["metric"] in ("substring_exact_match", "ruler_recall"):
            assert all(a in doc["prompt"] for a in doc["answers"])  # the fact is in the context


@pytest.mark.parametrize("length", [4096, 16384])
@pytest.mark.parametrize("task", sorted(DATA_BACKED))
def test_data_backed_tasks_fit_and_fill(task, length, tokenizer, helmet_dir):
    docs = helmet.build(task, tokenizer=tokenizer, context_length=length, num_samples=2, data_dir=helmet_dir)["test"]
    _check_fit(tokenizer, docs, length, DATA_BACKED[task])


@pytest.mark.parametrize("task", ["json_kv", "ruler_mv", "synth_rerank", "synth_icl"])
def test_seed_decides_the_documents(task, tokenizer, tmp_path):
    build = GENERATED[task][0]
    make = lambda seed: build(task, tokenizer=tokenizer, context_length=4096, num_samples=2, seed=seed,  # noqa: E731
                              data_dir=tmp_path)["test"].to_list()
    first = make(1)
    assert first == make(1)
    assert first != make(2)
    assert first[0]["prompt"] != first[1]["prompt"]  # samples differ from each other too


def test_rag_prompt_from_helmet_layout(tokenizer, helmet_dir):
    doc = helmet.build("kilt_nq", tokenizer=tokenizer, context_length=4096, num_samples=1, data_dir=helmet_dir)["test"][0]
    rows = [json.loads(line) for line in (helmet_dir / "data/kilt/nq-dev-multikilt_1000_k20_dep6.jsonl").open()]
    row = next(r for r in rows if f"Question: {r['question']}\nAnswer:" in doc["prompt"])
    assert doc["prompt"].startswith("Use the given documents to write a concise and short answer to the question. "
                                    "Write your answer in the following format:\nAnswer: [answer]\n\nDocument (Title: D): ")
    assert doc["prompt"].count("\nAnswer: demo") == helmet.RAG_SHOTS  # two demonstrations with their answers
    first = row["ctxs"][0]
    assert f"\n\nDocument (Title: {first['title']}): {first['text']}\n\n" in doc["prompt"]
    assert doc["prompt"].endswith(f"\n\nQuestion: {row['question']}\nAnswer:")
    assert list(doc["answers"]) == row["answers"] and doc["metric"] == "substring_exact_match"


def test_rerank_prompt_from_helmet_layout(tokenizer, helmet_dir):
    doc = helmet.build("msmarco_rerank", tokenizer=tokenizer, context_length=4096, num_samples=1,
                       data_dir=helmet_dir)["test"][0]
    assert doc["prompt"].startswith("You are provided with a list of documents, each indicated by their ID.")
    assert "\nRanking: ID3 > ID1 > ID2\n\n[ID: 0] Document: " in doc["prompt"]  # a demo follows the instruction
    assert doc["prompt"].count("\nRanking: ") == 1 + helmet.RERANK_SHOTS  # the format line, then each demo
    query = doc["prompt"].rsplit("Query: ", 1)[1]
    assert query.startswith("query ") and query.endswith("\nRanking:")
    assert doc["qrels"][:4] == ["0:3", "1:2", "2:1", "3:0"]
    assert doc["answers"][0].startswith("0 > 4 > 8")  # gold ranking: label 3 first, in file order


def test_icl_prompt_from_helmet_layout(tokenizer, helmet_dir):
    docs = helmet.build("icl_trec_coarse", tokenizer=tokenizer, context_length=4096, num_samples=6,
                        data_dir=helmet_dir)["test"]
    assert len(docs) == 6
    for doc in docs:
        assert doc["prompt"].startswith('Use the provided mapping from the text to label to assign a label to the '
                                        'text. Only output "label: {label}" and nothing else. \n\n')
        assert doc["prompt"].endswith("\n\ntest text " + doc["prompt"].rsplit("test text ", 1)[1])
        assert doc["prompt"].endswith("\nlabel:") and doc["answers"][0] in {str(i) for i in range(6)}
        assert doc["prompt"].count("\nlabel: ") > 50  # many demonstrations


def test_helmet_recall_files_are_read_when_present(tokenizer, tmp_path):
    data = tmp_path / "data"
    context = "JSON data:\n{" + ", ".join(f'"k{i}": "v{i}"' for i in range(3000)) + "}"
    _write(data / "json_kv/test_k50_dep6.jsonl",
           [{"context": context, "question": '"k7"', "answer": "v7", "demos": [['"k1"', "v1"], ['"k2"', "v2"]]}])
    doc = recall.build("json_kv", tokenizer=tokenizer, context_length=4096, num_samples=1, data_dir=tmp_path)["test"][0]
    assert doc["prompt"].startswith('JSON data:\n{"k0": "v0"')
    assert doc["prompt"].endswith('Key: "k1"\nCorresponding value: v1\n\nKey: "k2"\nCorresponding value: v2\n\n'
                                  'Key: "k7"\nCorresponding value:')
    _write(data / "ruler/niah_multikey_2/validation_4096.jsonl",
           [{"context": "needle text", "query": "abc-def", "outputs": ["1234567"], "type_needle_v": "numbers"}])
    doc = recall.build("ruler_mk_needle", tokenizer=tokenizer, context_length=4096, data_dir=tmp_path)["test"][0]
    assert doc["prompt"] == recall.niah_prompt("ruler_mk_needle", "needle text", "abc-def", "numbers")
    assert list(doc["answers"]) == ["1234567"]


@pytest.mark.parametrize("task, synthetic", [("kilt_nq", "kvbench_synth_rag"), ("msmarco_rerank", "kvbench_synth_rerank"),
                                             ("icl_banking77", "kvbench_synth_icl")])
def test_missing_data_says_how_to_fetch_and_names_the_synthetic_task(task, synthetic, tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        helmet.build(task, tokenizer=tokenizer, context_length=8192, data_dir=tmp_path / "nowhere")
    message = str(error.value)
    assert "kvbench data fetch" in message and synthetic in message and "data_dir" in message


def test_bad_settings_are_explained(tokenizer, helmet_dir):
    with pytest.raises(ValueError, match="context_length.*4096"):
        helmet.build("kilt_nq", tokenizer=tokenizer, context_length=10000, data_dir=helmet_dir)
    with pytest.raises(ValueError, match="must be an integer"):
        synth.build("synth_rag", tokenizer=tokenizer, context_length="16k")
    with pytest.raises(ValueError, match="pretrained"):
        synth.build("synth_rag", context_length=4096)
