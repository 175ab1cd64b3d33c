"""Generation through the kvbench backend as HELMET generates: where it stops, what the metric sees, and what a
prompt over max_length loses (its context's end, never the instruction or the question)."""

from __future__ import annotations

import logging

import pytest
from checkpoints import save_tiny_checkpoint
from lm_eval.api.instance import Instance
from transformers import LlamaForCausalLM

from kvbench.data import common
from kvbench.data.results import process_results
from kvbench.lmeval import backend as backend_module
from kvbench.lmeval.backend import KVBenchLM

MERGED = ".\n"  # one token of the test tokenizer that holds a newline and more: HELMET does not stop at it


class Scripted(LlamaForCausalLM):
    """A real model whose next-token choice follows a script: the cache, attention and eviction run as usual,
    only the last position's logits are replaced, so the output is known."""

    script: list[int] = []
    prompt_tokens = 0

    def forward(self, input_ids=None, position_ids=None, cache=None, **kwargs):
        output = super().forward(input_ids=input_ids, position_ids=position_ids, cache=cache, **kwargs)
        step = int(position_ids[0, -1]) + 1 - self.prompt_tokens
        if 0 <= step < len(self.script):
            output.logits[0, -1] = -1e4
            output.logits[0, -1, self.script[step]] = 1e4
        return output


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    checkpoint = save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
    lm = KVBenchLM(pretrained=str(checkpoint), device="cpu")
    lm.tokenizer.add_tokens([MERGED])
    lm._model = Scripted.from_pretrained(checkpoint).eval()
    lm._model.resize_token_embeddings(len(lm.tokenizer))
    return lm


def run(lm, doc: dict, output: str, max_gen_toks: int = 40) -> str:
    """The backend's answer to `doc` when the model writes `output` (then keeps writing "x")."""
    tokenizer = lm.tokenizer
    Scripted.script = tokenizer.encode(output, add_special_tokens=False) + tokenizer.encode(
        "x" * 40, add_special_tokens=False
    )
    Scripted.prompt_tokens = len(lm.tok_encode(doc["prompt"]))
    request = Instance(
        "generate_until",
        doc,
        (doc["prompt"], {"until": ["\n"], "max_gen_toks": max_gen_toks}),
        0,
        ("kvbench_test", 0, 1),
    )
    return lm.generate_until([request], disable_tqdm=True)[0]


def doc(metric, answers, qrels=(), prefix="", stop=True) -> dict:
    template = common.Template("Read this.\n\n", "\n\nQuestion: which?\nAnswer:")
    row = {
        "prompt": template("some context words"),
        "template": template,
        "answers": list(answers),
        "qrels": list(qrels),
        "metric": metric,
        "task": "t",
        "length": 1024,
        "answer_prefix": prefix,
        "stop_at_newline_token": stop,
    }
    return common.to_dataset([row])["test"][0]


def test_the_merged_token_holds_a_newline(lm):
    [token] = lm.tokenizer.encode(MERGED, add_special_tokens=False)
    assert token not in lm.newline_token_ids and lm.tokenizer.convert_tokens_to_ids("Ċ") in lm.newline_token_ids


def test_rag_stops_at_a_newline_token_and_scores_the_whole_output(lm):
    rag = doc("substring_exact_match", ["London"], prefix="Answer:")
    answer = run(lm, rag, "Paris" + MERGED + "London\nmore text")
    assert answer == "Paris.\nLondon\n"  # past the merged token, up to and with the newline token
    assert process_results(rag, [answer])["score"] == 1.0  # HELMET finds London; "cut at \n" would not


def test_icl_parses_the_label_after_a_newline_inside_a_token(lm):
    icl = doc("label_accuracy", ["5"])
    answer = run(lm, icl, "3" + MERGED + "label: 5\nlabel: 4")
    assert answer == "3.\nlabel: 5\n"
    assert process_results(icl, [answer])["score"] == 1.0  # HELMET's parse finds "label: 5"; "3." alone scores 0


def test_rerank_ranks_by_the_longest_chain_of_the_whole_output(lm):
    qrels = ["1:0", "2:0", "3:3", "4:2", "5:1"]
    rerank = doc("ndcg_at_10", ["3 > 4 > 5"], qrels)
    answer = run(lm, rerank, "1 > 2" + MERGED + "3 > 4 > 5\n2 > 1")
    assert answer == "1 > 2.\n3 > 4 > 5\n"
    assert process_results(rerank, [answer])["score"] == pytest.approx(1.0)  # the chain 3 > 4 > 5, not 1 > 2
    assert process_results(rerank, ["1 > 2"])["score"] == 0.0  # what cutting at "\n" would have scored


def test_recall_does_not_stop_at_newlines(lm):
    ruler = doc("ruler_recall", ["1234567", "7654321"], stop=False)
    gen = {"until": [], "max_gen_toks": 40}
    tokenizer = lm.tokenizer
    Scripted.script = tokenizer.encode("1234567.\nand 7654321\nx", add_special_tokens=False) + [lm.eot_token_id]
    Scripted.prompt_tokens = len(lm.tok_encode(ruler["prompt"]))
    answer = lm.generate_until(
        [Instance("generate_until", ruler, (ruler["prompt"], gen), 0, ("t", 0, 1))], disable_tqdm=True
    )[0]
    assert answer == "1234567.\nand 7654321\nx"  # HELMET's recall stops only at the end-of-sequence token
    assert process_results(ruler, [answer])["score"] == 1.0


def test_a_prompt_over_max_length_loses_context_only(lm, caplog, monkeypatch):
    """A 300-token prompt with max_length=200: the end of the context is cut, the instruction and question stay."""
    tokenizer = lm.tokenizer
    template = common.Template("Instruction: answer from the records below.\n\n", "\n\nQuestion: what is x?\nAnswer:")
    records = []
    while len(lm.tok_encode(template(" ".join(records)))) < 300:
        records.append(f"record {len(records)} is blue")
    prompt = template(" ".join(records))
    long = common.to_dataset(
        [
            {
                "prompt": prompt,
                "template": template,
                "answers": ["x"],
                "metric": "substring_exact_match",
                "task": "t",
                "length": 1024,
            }
        ]
    )["test"][0]
    seen = []
    real_generate = backend_module.generate
    monkeypatch.setattr(
        backend_module, "generate", lambda model, ids, *a, **k: seen.append(ids) or real_generate(model, ids, *a, **k)
    )
    monkeypatch.setattr(lm, "_max_length", 200)
    Scripted.script, Scripted.prompt_tokens = [], 0
    with caplog.at_level(logging.WARNING, logger="lm_eval.models.kvbench"):
        lm.generate_until(
            [
                Instance(
                    "generate_until",
                    long,
                    (prompt, {"until": ["\n"], "max_gen_toks": 8}),
                    0,
                    ("kvbench_some_task", 0, 1),
                )
            ],
            disable_tqdm=True,
        )
    ran = tokenizer.decode(seen[0])
    assert len(seen[0]) <= 192
    assert ran.startswith(template.prefix + "record 0 is blue") and ran.endswith(template.suffix)
    assert records[-1] not in ran  # the end of the context went
    [warning] = [r.getMessage() for r in caplog.records]
    assert "kvbench_some_task" in warning and "max_length=" in warning
    assert f"cut by {len(lm.tok_encode(prompt)) - len(seen[0])} tokens" in warning
