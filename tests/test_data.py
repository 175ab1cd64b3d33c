"""Task documents: every task at 4K and 16K fits and fills its length; seeds; HELMET's layout; missing data."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from checkpoints import build_tokenizer  # noqa: E402
from helmet_files import write_helmet_data  # noqa: E402
from helmet_files import write_jsonl as _write  # noqa: E402

from kvbench.data import common, helmet, recall, ruler, synth  # noqa: E402

GENERATED = {
    **{f"gen_{t}": (ruler.build, recall.GEN_TOKENS[t]) for t in recall.GEN_TOKENS},
    **{t: (synth.build, synth.GEN_TOKENS[t]) for t in synth.GEN_TOKENS},
}
DATA_BACKED = {
    **{t: (helmet.build, helmet.RAG_GEN_TOKENS) for t in helmet.RAG_FILES},
    "msmarco_rerank": (helmet.build, helmet.RERANK_GEN_TOKENS),
    **{t: (helmet.build, helmet.ICL_GEN_TOKENS) for t in helmet.ICL_SHOTS},
    **{t: (recall.build, recall.GEN_TOKENS[t]) for t in recall.GEN_TOKENS},
}


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
    build, gen = DATA_BACKED[task]
    docs = build(task, tokenizer=tokenizer, context_length=length, num_samples=2, data_dir=helmet_dir)["test"]
    _check_fit(tokenizer, docs, length, gen)


@pytest.mark.parametrize("task", ["gen_json_kv", "gen_ruler_mv", "synth_rerank", "synth_icl"])
def test_seed_decides_the_documents(task, tokenizer, tmp_path):
    build = GENERATED[task][0]
    make = lambda seed: build(
        task,
        tokenizer=tokenizer,
        context_length=4096,
        num_samples=2,
        seed=seed,  # noqa: E731
        data_dir=tmp_path,
    )["test"].to_list()
    first = make(1)
    assert first == make(1)
    assert first != make(2)
    assert first[0]["prompt"] != first[1]["prompt"]  # samples differ from each other too


def test_rag_prompt_from_helmet_layout(tokenizer, helmet_dir):
    doc = helmet.build("kilt_nq", tokenizer=tokenizer, context_length=4096, num_samples=1, data_dir=helmet_dir)["test"][
        0
    ]
    rows = [json.loads(line) for line in (helmet_dir / "data/kilt/nq-dev-multikilt_1000_k20_dep6.jsonl").open()]
    row = next(r for r in rows if f"Question: {r['question']}\nAnswer:" in doc["prompt"])
    assert doc["prompt"].startswith(
        "Use the given documents to write a concise and short answer to the question. "
        "Write your answer in the following format:\nAnswer: [answer]\n\nDocument (Title: D): "
    )
    assert doc["prompt"].count("\nAnswer: demo") == helmet.RAG_SHOTS  # two demonstrations with their answers
    first = row["ctxs"][0]
    assert f"\n\nDocument (Title: {first['title']}): {first['text']}\n\n" in doc["prompt"]
    assert doc["prompt"].endswith(f"\n\nQuestion: {row['question']}\nAnswer:")
    assert list(doc["answers"]) == row["answers"] and doc["metric"] == "substring_exact_match"


def test_rerank_prompt_from_helmet_layout(tokenizer, helmet_dir):
    doc = helmet.build("msmarco_rerank", tokenizer=tokenizer, context_length=4096, num_samples=1, data_dir=helmet_dir)[
        "test"
    ][0]
    assert doc["prompt"].startswith("You are provided with a list of documents, each indicated by their ID.")
    assert "\nRanking: ID3 > ID1 > ID2\n\n[ID: 0] Document: " in doc["prompt"]  # a demo follows the instruction
    assert doc["prompt"].count("\nRanking: ") == 1 + helmet.RERANK_SHOTS  # the format line, then each demo
    query = doc["prompt"].rsplit("Query: ", 1)[1]
    assert query.startswith("query ") and query.endswith("\nRanking:")
    assert doc["qrels"][:4] == ["0:3", "1:2", "2:1", "3:0"]
    assert doc["answers"][0].startswith("0 > 4 > 8")  # gold ranking: label 3 first, in file order


def test_icl_prompt_from_helmet_layout(tokenizer, helmet_dir):
    docs = helmet.build(
        "icl_trec_coarse", tokenizer=tokenizer, context_length=4096, num_samples=6, data_dir=helmet_dir
    )["test"]
    assert len(docs) == 6
    for doc in docs:
        assert doc["prompt"].startswith(
            "Use the provided mapping from the text to label to assign a label to the "
            'text. Only output "label: {label}" and nothing else. \n\n'
        )
        assert doc["prompt"].endswith("\n\ntest text " + doc["prompt"].rsplit("test text ", 1)[1])
        assert doc["prompt"].endswith("\nlabel:") and doc["answers"][0] in {str(i) for i in range(6)}
        assert doc["prompt"].count("\nlabel: ") > 50  # many demonstrations


def test_helmet_recall_files_are_read_with_helmets_templates(tokenizer, tmp_path):
    data = tmp_path / "data"
    context = "JSON data:\n{" + ", ".join(f'"k{i}": "v{i}"' for i in range(3000)) + "}"
    _write(
        data / "json_kv/test_k50_dep6.jsonl",
        [{"context": context, "question": '"k7"', "answer": "v7", "demos": [['"k1"', "v1"], ['"k2"', "v2"]]}],
    )
    doc = recall.build("json_kv", tokenizer=tokenizer, context_length=4096, num_samples=1, data_dir=tmp_path)["test"][0]
    assert doc["prompt"].startswith('JSON data:\n{"k0": "v0"')
    assert doc["prompt"].endswith(
        'Key: "k1"\nCorresponding value: v1\n\nKey: "k2"\nCorresponding value: v2\n\nKey: "k7"\nCorresponding value:'
    )
    assert doc["prompt"][doc["context_start"] : doc["context_end"]] == doc["prompt"].split("\n\nExtract")[0]
    _write(
        data / "ruler/niah_multikey_2/validation_4096.jsonl",
        [{"context": "needle text", "query": "abc-def", "outputs": ["1234567"], "type_needle_v": "number"}],
    )
    doc = recall.build("ruler_mk_needle", tokenizer=tokenizer, context_length=4096, data_dir=tmp_path)["test"][0]
    assert doc["prompt"] == (
        "A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you about "
        "the number afterwards.\nneedle text\nWhat is the special magic number for abc-def mentioned in the provided "
        "text?\nThe special magic number for abc-def mentioned in the provided text is"
    )
    assert list(doc["answers"]) == ["1234567"] and doc["sample_line"] == 0


@pytest.mark.parametrize("task", sorted(recall.GEN_TOKENS))
def test_recall_without_helmets_files_fails_and_names_the_generated_task(task, tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        recall.build(task, tokenizer=tokenizer, context_length=8192, data_dir=tmp_path / "nowhere")
    message = str(error.value)
    assert "kvbench data fetch" in message and f"kvbench_gen_{task}" in message and "data_dir" in message


@pytest.mark.parametrize(
    "task, synthetic",
    [
        ("kilt_nq", "kvbench_synth_rag"),
        ("msmarco_rerank", "kvbench_synth_rerank"),
        ("icl_banking77", "kvbench_synth_icl"),
    ],
)
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


# ---- the generated recall variants: RULER's templates and haystacks, line by line ----

ADJECTIVE_NOUN = r"[A-Za-z][A-Za-z' -]*-[A-Za-z' -]*[A-Za-z]"  # wonderwords' adjective, "-", its noun
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def generated(task, tokenizer, samples=2):
    return ruler.build(task, tokenizer=tokenizer, context_length=4096, num_samples=samples)["test"]


@pytest.mark.parametrize(
    "task, kind, key, value",
    [("gen_ruler_mk_needle", "number", ADJECTIVE_NOUN, r"\d{7}"), ("gen_ruler_mk_uuid", "uuid", UUID, UUID)],
)
def test_generated_multikey_prompts_are_rulers_line_by_line(task, kind, key, value, tokenizer):
    import re

    for doc in generated(task, tokenizer):
        lines = doc["prompt"].split("\n")
        query = re.fullmatch(f"The special magic {kind} for (.+) mentioned in the provided text is", lines[-1])[1]
        assert re.fullmatch(key, query)
        assert lines[0] == (
            f"A special magic {kind} is hidden within the following text. Make sure to memorize it. "
            f"I will quiz you about the {kind} afterwards."
        )  # singular: one needle
        assert lines[-2] == f"What is the special magic {kind} for {query} mentioned in the provided text?"
        haystack = lines[1:-2]  # one needle per line (RULER's "needle" haystack)
        assert len(haystack) > 20
        for line in haystack:
            assert re.fullmatch(f"One of the special magic {kind}s for ({key}) is: ({value})\\.", line), line
        gold = [line for line in haystack if f" for {query} is: " in line]
        assert len(gold) == 1 and gold[0].endswith(f": {doc['answers'][0]}.")
        assert doc["prompt"][doc["context_start"] : doc["context_end"]] == "\n".join(haystack)


def test_generated_multivalue_prompt_hides_four_values_in_prose(tokenizer):
    import re

    prose = set(ruler.prose_sentences())
    for doc in generated("gen_ruler_mv", tokenizer):
        lines = doc["prompt"].split("\n")
        assert len(lines) == 4  # instruction, the prose haystack on one line, question, answer prefix
        query = re.fullmatch(r"The special magic numbers for (.+) mentioned in the provided text are", lines[-1])[1]
        assert re.fullmatch(ADJECTIVE_NOUN, query)
        assert lines[0] == (
            "Some special magic numbers are hidden within the following text. Make sure to memorize "
            "it. I will quiz you about the numbers afterwards."
        )
        assert lines[2] == f"What are all the special magic numbers for {query} mentioned in the provided text?"
        needles = [f"One of the special magic numbers for {query} is: {v}." for v in doc["answers"]]
        assert len(needles) == 4 and all(n in lines[1] for n in needles)
        rest = lines[1]
        for needle in needles:
            rest = rest.replace(needle, "|")
        sentences = [s for part in rest.split("|") for s in re.split(r"(?<=[.!?]) (?=\S)", part.strip()) if s]
        assert len(sentences) > 20 and all(s in prose for s in sentences)  # joined by spaces, from the bundled prose


def test_generated_json_kv_draws_its_demonstrations_from_the_whole_object(tokenizer):
    import json
    import re

    distances = []
    for doc in generated("gen_json_kv", tokenizer, samples=6):
        lines = doc["prompt"].split("\n")
        assert lines[0] == "JSON data:" and lines[1].startswith('{"')
        end = lines.index("Extract the value corresponding to the specified key in the JSON object below.")
        records = [json.loads("{" + line.strip(" {},") + "}") for line in lines[1 : end - 1]]
        keys = [next(iter(r)) for r in records]
        assert all(re.fullmatch(UUID, k) for k in keys) and lines[end - 1] == ""
        asked = json.loads(lines[-2].removeprefix("Key: "))
        assert lines[-1] == "Corresponding value:" and records[keys.index(asked)][asked] == doc["answers"][0]
        demos = [json.loads(line.removeprefix("Key: ")) for line in lines[end + 2 : -2] if line.startswith("Key: ")]
        assert len(demos) == 2 and asked not in demos
        distances += [abs(keys.index(d) - keys.index(asked)) for d in demos]
    assert max(distances) > 20  # not the asked record's neighbourhood


def test_helmet_documents_carry_the_lines_of_their_samples_and_demos(tokenizer, tmp_path):
    from helmet_reference_files import write_all

    expected = json.loads((Path(__file__).parent / "data/helmet_draws/expected_ids.json").read_text())["tasks"]
    write_all(str(tmp_path / "data"))
    for task, reference in (("kilt_triviaqa", "kilt_triviaqa"), ("msmarco_rerank", "msmarco_rerank_psg")):
        docs = helmet.build(task, tokenizer=tokenizer, context_length=131072, data_dir=tmp_path)["test"]
        assert docs["sample_line"] == expected[reference]["sample_lines"]
        assert docs["demo_lines"] == expected[reference]["demo_lines"]
    docs = recall.build("ruler_mk_uuid", tokenizer=tokenizer, context_length=131072, data_dir=tmp_path)["test"]
    assert docs["sample_line"] == expected["ruler_niah_mk_3"]["sample_lines"]
    source = common.sources_of(["kvbench_ruler_mk_uuid"])["kvbench_ruler_mk_uuid"]
    assert source["data"] == "helmet" and list(source["files"]) == ["ruler/niah_multikey_3/validation_131072.jsonl"]
    assert (
        source["files"]["ruler/niah_multikey_3/validation_131072.jsonl"]
        == hashlib.sha256((tmp_path / "data/ruler/niah_multikey_3/validation_131072.jsonl").read_bytes()).hexdigest()
    )


def test_the_length_follows_the_model_and_one_it_cannot_hold_is_an_error_before_any_work(tmp_path):
    from checkpoints import save_tiny_checkpoint

    model = save_tiny_checkpoint(tmp_path / "model", max_positions=20000)
    docs = synth.build("synth_recall", pretrained=str(model), num_samples=1)["test"]
    assert docs[0]["length"] == 20000  # the model's positions (no --metadata)
    helmet_files = write_helmet_data(tmp_path / "helmet", lengths=(16384,), rows=1)
    docs = helmet.build("kilt_nq", pretrained=str(model), num_samples=1, data_dir=helmet_files)["test"]
    assert docs[0]["length"] == 16384  # HELMET's largest length that fits in 20000
    with pytest.raises(
        ValueError,
        match=r"context_length=131072, but .* holds 20000 positions \(max_position_"
        r"embeddings\); pass --metadata '\{\"context_length\": 20000\}' or less",
    ):
        synth.build("synth_recall", pretrained=str(model), context_length=131072)


@pytest.mark.parametrize("task", sorted({**GENERATED, **DATA_BACKED}))
def test_every_task_says_where_its_context_ends_and_its_question_begins(task, tokenizer, helmet_dir):
    # What query=agnostic relies on: prefilling the tokens before the question holds the whole context and nothing
    # of what comes after it (the question, and instructions or demonstrations placed after the context).
    build, _ = {**GENERATED, **DATA_BACKED}[task]
    for doc in build(task, tokenizer=tokenizer, context_length=4096, num_samples=2, data_dir=helmet_dir)["test"]:
        prompt, end = doc["prompt"], doc["context_end"]
        assert 0 <= doc["context_start"] < end < len(prompt)
        ids, first = common.question_token(tokenizer, prompt, end)
        context, question = tokenizer.decode(ids[:first]), tokenizer.decode(ids[first:])
        assert prompt[:end].startswith(context) and len(context) >= end - 8  # at most a straddling token short
        assert question.endswith(prompt[end:]) and context + question == prompt
