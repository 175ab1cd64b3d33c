"""Query-agnostic evaluation: the context prefilled and evicted before the question is known, one or several
questions asked of what was kept, and the two modes side by side on the leaderboard.

Kept sets are read from the cache itself (each head group's `positions`) at the moment prefill ends; behaviour is
checked on the bundled model, where patched SnapKV's only route to the needle is the question.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import random_prompt, tiny_model
from greedy import assert_same_greedy
from test_methods import conformance_params  # one setting or more of every built-in method
from test_scoring import result_file

from kvbench import engine, generate, generate_many, leaderboard, load_method
from kvbench.ledger import Ledger
from kvbench.scoring import load_runs, score_runs
from kvbench.tiny import evaluate

CONTEXT, QUESTION, CHUNK = 96, 12, 32


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=3)


def kept_after_prefill(monkeypatch, model, prompt, method, question_start):
    """Each layer's and head group's kept positions (per head) when prefill ends, and the generation."""
    kept = []
    prefill = engine.prefill

    def recording(model, cache, ids, chunk_size, kernel=None, tokenizer=None):
        logits = prefill(model, cache, ids, chunk_size, kernel, tokenizer)
        kept.append([[group.positions.clone() for group in layer.groups] for layer in cache.layers])
        return logits

    monkeypatch.setattr(engine, "prefill", recording)
    result = generate(model, prompt, method, chunk_size=CHUNK, max_new_tokens=4, question_start=question_start)
    [only] = kept
    return only, result


def context_part(kept):
    """The kept positions that lie in the context (a query-aware prefill also holds the question's)."""
    return [[[row[row < CONTEXT].tolist() for row in group] for group in layer] for layer in kept]


METHODS = {
    "snapkv patched": ("snapkv", {"keep": 0.2, "schedule": "patched", "recent": 4, "obs_window": 8}),
    "snapkv post-fill": ("snapkv", {"keep": 0.2, "schedule": "postfill", "recent": 4, "obs_window": 8}),
    "pyramidkv patched": ("pyramidkv", {"keep": 0.2, "schedule": "patched", "recent": 4, "obs_window": 8}),
}


@pytest.mark.parametrize("name", METHODS)
def test_no_kept_context_entry_depends_on_the_question_when_agnostic(monkeypatch, model, name):
    method, params = METHODS[name]
    context = random_prompt(CONTEXT, seed=1)
    questions = [random_prompt(QUESTION, seed=s) for s in (2, 3)]
    agnostic, aware = [], []
    for question in questions:
        prompt = torch.cat([context, question])
        agnostic.append(kept_after_prefill(monkeypatch, model, prompt, load_method(method, **params), CONTEXT)[0])
        aware.append(kept_after_prefill(monkeypatch, model, prompt, load_method(method, **params), None)[0])
    # Per layer, head group and head: the same positions, whichever question follows.
    assert context_part(agnostic[0]) == context_part(agnostic[1])
    assert all(len(row) < CONTEXT for layer in context_part(agnostic[0]) for group in layer for row in group)
    # The contrast that makes the check mean something: asked with its context, the question picks the entries.
    assert context_part(aware[0]) != context_part(aware[1])


def every_builtin_setting():
    settings = conformance_params(Path(tempfile.mkdtemp()))  # its head pattern is for 3 layers of 2 KV heads
    return [
        pytest.param(name, params, id=f"{name}-{i}")
        for name, options in settings.items()
        for i, params in enumerate(options)
    ]


@pytest.mark.parametrize("name, params", every_builtin_setting())
def test_every_method_runs_query_agnostic_and_keeps_the_same_context_whatever_the_question(monkeypatch, name, params):
    model = tiny_model("llama", seed=5, num_hidden_layers=3)
    context = random_prompt(CONTEXT, seed=1)
    kept = [
        kept_after_prefill(
            monkeypatch,
            model,
            torch.cat([context, random_prompt(QUESTION, seed=s)]),
            load_method(name, **params),
            CONTEXT,
        )
        for s in (2, 3)
    ]
    assert context_part(kept[0][0]) == context_part(kept[1][0])
    assert all(run.stats.tokens == CONTEXT + QUESTION + run.decode_steps for _, run in kept)


def test_full_attention_answers_the_same_in_both_modes(model):
    prompt = random_prompt(CONTEXT + QUESTION, seed=4)
    runs = {
        mode: generate(
            model,
            prompt,
            load_method("full"),
            chunk_size=CHUNK,
            max_new_tokens=6,
            return_logits=True,
            question_start=start,
        )
        for mode, start in (("aware", None), ("agnostic", CONTEXT))
    }
    aware, agnostic = runs["aware"], runs["agnostic"]
    assert_same_greedy(agnostic.token_ids, agnostic.logits, aware.token_ids, aware.logits, atol=1e-4, rtol=1e-4)
    assert agnostic.stats.kv_footprint == pytest.approx(aware.stats.kv_footprint) == pytest.approx(1.0)
    assert agnostic.stats.kv_peak == pytest.approx(aware.stats.kv_peak)
    assert agnostic.prompt_tokens == aware.prompt_tokens == CONTEXT + QUESTION


def test_streamingllm_answers_alike_in_both_modes_when_a_chunk_ends_where_the_question_begins(model):
    # StreamingLLM never reads the question: with a chunk boundary at the question, query-aware runs the question
    # as its own chunk over what the window kept, exactly as query-agnostic runs it. With the question inside the
    # last chunk, query-aware lets it attend over that whole chunk before the window evicts it; query-agnostic
    # evicted the chunk with the context. That is the schedule's doing, not the question's.
    def run(context, query):
        prompt = random_prompt(context + QUESTION, seed=8)
        return generate(
            model,
            prompt,
            load_method("streamingllm", sink=2, window=8),
            chunk_size=CHUNK,
            max_new_tokens=4,
            return_logits=True,
            question_start=context if query == "agnostic" else None,
        )

    aware, agnostic = run(CONTEXT, "aware"), run(CONTEXT, "agnostic")
    assert CONTEXT % CHUNK == 0
    assert_same_greedy(agnostic.token_ids, agnostic.logits, aware.token_ids, aware.logits, atol=1e-5, rtol=1e-5)
    assert agnostic.stats.kv_footprint == pytest.approx(aware.stats.kv_footprint)
    inside = CONTEXT - CHUNK // 2  # the question shares its chunk with the context's last 16 tokens
    # the first step's logits: both runs are fed the same tokens up to there
    assert not torch.allclose(run(inside, "aware").logits[0], run(inside, "agnostic").logits[0], atol=1e-3)


def test_a_question_start_outside_the_prompt_is_refused(model):
    prompt = random_prompt(20, seed=5)
    for bad in (0, 20, 25, 2.5):
        with pytest.raises(ValueError, match=r"question_start must be a token index within the prompt \(1..19"):
            generate(model, prompt, load_method("full"), max_new_tokens=1, question_start=bad)


# ---- several questions of one context ----


def test_several_questions_of_one_context_answer_as_separate_runs_from_one_prefill(monkeypatch, model):
    context = random_prompt(CONTEXT, seed=6)
    questions = [random_prompt(n, seed=10 + n) for n in (5, 9, 12)]
    method = lambda: load_method("snapkv", keep=0.25, schedule="patched", recent=4, obs_window=8)  # noqa: E731
    prefills = []
    prefill = engine.prefill
    monkeypatch.setattr(engine, "prefill", lambda *args: prefills.append(1) or prefill(*args))
    apart = [
        generate(model, torch.cat([context, q]), method(), chunk_size=CHUNK, max_new_tokens=5, question_start=CONTEXT)
        for q in questions
    ]
    assert len(prefills) == len(questions)
    prefills.clear()
    together = generate_many(model, context, questions, method(), chunk_size=CHUNK, max_new_tokens=5)
    assert len(prefills) == 1  # the context is prefilled (and evicted) once; each question gets a copy
    # Exact: each question runs the same forwards on a copy of the same prefill as its separate run (not a near-tie
    # between two computations).
    assert [g.token_ids for g in together] == [g.token_ids for g in apart]
    assert len({tuple(g.token_ids) for g in together}) > 1  # different questions, different answers
    # The shared context counts once: each question's footprint is its own request's with the prefix shared.
    for shared, alone in zip(together, apart, strict=True):
        assert shared.prompt_tokens == alone.prompt_tokens and shared.stats.tokens == alone.stats.tokens
        assert shared.stats.kv_peak == pytest.approx(alone.stats.kv_peak)  # peaks are each question's own
        assert shared.stats.kv_footprint != pytest.approx(alone.stats.kv_footprint)
    [one] = generate_many(model, context, questions[:1], method(), chunk_size=CHUNK, max_new_tokens=5)
    assert one.token_ids == apart[0].token_ids and one.stats.kv_footprint == pytest.approx(apart[0].stats.kv_footprint)


def test_a_shared_prefix_counts_once_among_its_questions():
    # One layer, one head. The context: two chunks of 8 (active 8*9/2 + 8*8 + 8*9/2 = 136 = C(C+1)/2, C = 16).
    ledger = Ledger(1, 1)
    for held, new in ((0, 8), (8, 8)):
        ledger.record_step(0, [0], held, new)
        ledger.end_step()
    alone = copy.deepcopy(ledger)
    sharers = 4
    ledger.share_prefix(16, sharers)
    for each in (ledger, alone):  # a question of 3 tokens then 2 decode steps, over 10 kept entries
        each.record_step(0, [0], 10, 3)
        each.end_step()
        for step in range(2):
            each.record_step(0, [0], 13 + step, 1)
            each.end_step()
    own = 3 * 4 / 2 + 3 * 10 + 14 + 15  # what the question and the answer attended over
    context_active, context_full, tokens = 136, 16 * 17 / 2, 16 + 3 + 2
    assert alone.stats(tokens).kv_footprint == pytest.approx((context_active + own) / (tokens * (tokens + 1) / 2))
    shared = (context_active / sharers + own) / (context_full / sharers + tokens * (tokens + 1) / 2 - context_full)
    assert ledger.stats(tokens).kv_footprint == pytest.approx(shared)
    assert ledger.stats(tokens).kv_peak == alone.stats(tokens).kv_peak
    one = Ledger(1, 1)
    one.share_prefix(16, 1)  # one sharer: nothing changes
    assert one._shared == (0.0, 0.0)
    with pytest.raises(ValueError, match="at least one request"):
        one.share_prefix(16, 0)


# ---- on the bundled model: a question-guided method loses what the question would have found ----

LENGTH, SAMPLES, TINY_CHUNK = 1024, 16, 256


@pytest.fixture(scope="module")
def bundled(bundled_tiny):
    model, tokenizer = bundled_tiny
    return model, tokenizer, evaluate.samples("synth_recall", tokenizer, LENGTH, SAMPLES)


def run(bundled, method, query):
    model, tokenizer, prompts = bundled
    return evaluate.evaluate(
        model, tokenizer, "synth_recall", method, chunk_size=TINY_CHUNK, prompts=prompts, query=query
    )


@pytest.mark.slow
def test_patched_snapkv_keeps_the_needle_only_when_it_may_read_the_question(bundled):
    full = run(bundled, None, "aware")
    patched = lambda: load_method("snapkv", keep=0.05, schedule="patched", recent=16, obs_window=16)  # noqa: E731
    aware, agnostic = run(bundled, patched, "aware"), run(bundled, patched, "agnostic")
    assert full.score >= 0.9
    assert aware.score >= 0.9 * full.score
    assert agnostic.score <= 0.5 * aware.score
    assert agnostic.kv_footprint == pytest.approx(aware.kv_footprint, rel=0.05)  # at the same footprint


@pytest.mark.slow
def test_streamingllm_does_not_care_when_the_question_comes(bundled):
    streaming = lambda: load_method("streamingllm", sink=4, window=512)  # noqa: E731
    aware, agnostic = run(bundled, streaming, "aware"), run(bundled, streaming, "agnostic")
    assert agnostic.scores == aware.scores  # sample by sample
    assert 0 < sum(aware.scores) < len(aware.scores)  # some needles inside the window, some outside
    assert agnostic.kv_footprint == pytest.approx(aware.kv_footprint, rel=0.02)


# ---- the leaderboard: two modes side by side ----


def two_mode_results(folder):
    folder.mkdir()
    result_file(folder / "results_full.json", "full", {}, {"a": ("recall", 1.0, 1.0)}, samples=10)
    curves = {"aware": {0.1: 0.95, 0.3: 1.0}, "agnostic": {0.1: 0.2, 0.3: 0.5, 0.6: 0.95}}
    for query, points in curves.items():
        for keep, score in points.items():
            path = result_file(
                folder / f"results_snap-{query}-{keep}.json",
                "snapkv",
                {"keep": keep},
                {"a": ("recall", score, keep)},
                samples=10,
            )
            data = json.loads(path.read_text())
            data["config"]["kvbench"]["query"] = query
            path.write_text(json.dumps(data))
    return folder


def test_the_leaderboard_shows_each_mode_in_its_own_column_and_line(tmp_path):
    boards = score_runs(load_runs([two_mode_results(tmp_path / "runs")]))
    [board] = boards
    critical = board.categories["recall"].critical
    assert str(critical["snapkv"]) == "<10%"
    assert critical["snapkv [query-agnostic]"].value == pytest.approx(0.3 + 0.3 * 0.4 / 0.45)  # 0.5 -> 0.95 at 0.9
    table = leaderboard.rows(boards, 0.9)
    assert {(r["method"], r["query"]) for r in table} == {("snapkv", "aware"), ("snapkv", "agnostic")}
    markdown = leaderboard.to_markdown(table, 0.9)
    assert "| method | recall (aware) | rank | recall (agnostic) | rank |" in markdown
    assert "| snapkv | <10% [<10] | 1 | 57% [57] | 1 |" in markdown  # each ranked among the runs of its mode
    figure = leaderboard.figure(boards, 0.9)
    [ax] = figure.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    aware, agnostic = lines["snapkv"], lines["snapkv [query-agnostic]"]
    assert list(agnostic.get_xdata()) == [10, 30, 60] and list(aware.get_xdata()) == [10, 30]
    # one method in two modes: its colour and marker, the agnostic line dotted with filled markers
    assert (agnostic.get_color(), agnostic.get_marker()) == (aware.get_color(), aware.get_marker())
    assert agnostic.get_linestyle() != aware.get_linestyle() and agnostic.get_markerfacecolor() != "none"


def test_thresholds_rank_each_method_among_the_runs_of_its_mode(tmp_path):
    from kvbench import views

    rows = views.threshold_table(load_runs([two_mode_results(tmp_path / "runs")]), [0.85, 0.95])
    ranks = {row["method"]: row["rank"] for row in rows}
    assert ranks == {"snapkv": {"0.85": "1", "0.95": "1"}, "snapkv [query-agnostic]": {"0.85": "1", "0.95": "1"}}
    markdown = views.threshold_markdown(rows, [0.85, 0.95])
    assert markdown.index(": recall (query-aware)") < markdown.index(": recall (query-agnostic)")


def test_a_query_agnostic_full_is_the_baseline_when_no_aware_one_ran(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    for name, method, params, score, query in (
        ("full", "full", {}, 0.8, "agnostic"),
        ("s1", "snapkv", {"keep": 0.2}, 0.4, "agnostic"),
        ("s2", "snapkv", {"keep": 0.5}, 0.8, "agnostic"),
    ):
        footprint = params.get("keep", 1.0)
        path = result_file(folder / f"results_{name}.json", method, params, {"a": ("recall", score, footprint)})
        data = json.loads(path.read_text())
        data["config"]["kvbench"]["query"] = query
        path.write_text(json.dumps(data))
    [board] = score_runs(load_runs([folder]))
    recall = board.categories["recall"]
    assert recall.baseline == pytest.approx(0.8)
    assert recall.critical["snapkv [query-agnostic]"].value == pytest.approx(0.2 + 0.3 * 0.32 / 0.4)
    assert leaderboard.rows([board], 0.9)[0]["query"] == "agnostic"


# ---- the lm-eval backend and the sweep ----


@pytest.fixture(scope="module")
def backend(bundled):
    from kvbench.lmeval.backend import KVBenchLM

    return KVBenchLM(
        pretrained="kvbench-tiny",
        method="snapkv",
        keep="0.05",
        schedule="patched",
        recent="16",
        obs_window="16",
        chunk_size=256,
        query="agnostic",
    )


def multi_question_run(backend, monkeypatch, query):
    """kvbench_synth_recall_multi (2 lists, 3 questions each) through lm-eval's Python API, patched SnapKV at 10%;
    the prefills counted."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    prefills = []
    prefill = engine.prefill
    monkeypatch.setattr(engine, "prefill", lambda *args: prefills.append(len(args[2])) or prefill(*args))
    backend.configure("snapkv", backend.chunk_size, query, keep=0.1, schedule="patched", recent=16, obs_window=16)
    metadata = {"context_length": 1024, "num_samples": 2, "num_questions": 3, "pretrained": "kvbench-tiny"}
    out = lm_eval.simple_evaluate(
        model=backend,
        tasks=["kvbench_synth_recall_multi"],
        log_samples=True,
        task_manager=TaskManager(metadata=metadata),
        metadata=metadata,
    )
    return out, prefills


@pytest.mark.slow
def test_a_multi_question_task_prefills_each_context_once_when_agnostic(backend, monkeypatch):
    task = "kvbench_synth_recall_multi"
    agnostic, prefills = multi_question_run(backend, monkeypatch, "agnostic")
    assert len(prefills) == 2  # one per context, not per question
    samples = agnostic["samples"][task]
    assert len(samples) == 6 and len({s["doc"]["context_group"] for s in samples}) == 2
    assert agnostic["config"]["kvbench"]["query"] == "agnostic"
    aware, prefills = multi_question_run(backend, monkeypatch, "aware")
    assert len(prefills) == 6
    assert aware["config"]["kvbench"]["query"] == "aware"
    # Patched SnapKV finds the asked keys only when the question picks what is kept.
    assert aware["results"][task]["score,none"] >= 0.8
    assert agnostic["results"][task]["score,none"] <= 0.5 * aware["results"][task]["score,none"]


def test_agnostic_refuses_what_has_no_context_boundary(backend):
    from lm_eval.api.instance import Instance

    backend.configure("full", backend.chunk_size, "agnostic")
    plain = Instance(
        "generate_until",
        doc={},
        arguments=("Key: abcd\nValue:", {"until": ["\n"], "max_gen_toks": 4}),
        idx=0,
        metadata=("some_task", 0, 1),
    )
    with pytest.raises(ValueError, match="some_task: query=agnostic needs to know where each prompt's context ends"):
        backend.generate_until([plain])
    scored = Instance(
        "loglikelihood", doc={}, arguments=("Key: abcd\nValue:", " 1234"), idx=0, metadata=("choice_task", 0, 1)
    )
    with pytest.raises(ValueError, match="choice_task: query=agnostic runs generate_until tasks"):
        backend.loglikelihood([scored])


def test_a_bad_query_mode_is_named(bundled):
    from kvbench.lmeval.backend import KVBenchLM

    with pytest.raises(ValueError, match="query must be aware .* or agnostic .*; got 'agnostc'"):
        KVBenchLM(pretrained="kvbench-tiny", method="full", query="agnostc")


def test_query_modes_are_a_sweep_axis_and_aware_cells_keep_their_folders(tmp_path):
    import yaml

    from kvbench.sweep import Cell, cells, load_config

    path = tmp_path / "sweep.yaml"
    config = {
        "models": ["kvbench-tiny"],
        "methods": [{"name": "snapkv", "params": {"schedule": "patched"}, "values": [0.1]}],
        "tasks": ["kvbench_synth_recall"],
        "context_lengths": [1024],
        "chunk_sizes": [256],
        "metadata": {"num_samples": 4},
        "model_args": {"device": "cpu"},
        "query_modes": ["aware", "agnostic"],
    }
    path.write_text(yaml.safe_dump(config))
    aware, agnostic = cells(load_config(path))
    assert (aware.query, agnostic.query) == ("aware", "agnostic")
    # The folder kvbench 0.1.0 gave this cell before query modes existed: a resumed sweep finds it.
    assert aware.key == "88ff34e8bc3c4aa1" and agnostic.key != aware.key
    assert aware == Cell(
        "kvbench-tiny",
        "snapkv",
        {"keep": 0.1, "schedule": "patched"},
        "kvbench_synth_recall",
        1024,
        256,
        {"num_samples": 4},
        {"device": "cpu"},
        None,
        "keep",
    )
    assert "query=agnostic" in agnostic.lm_eval_command(tmp_path) and "query=" not in aware.lm_eval_command(tmp_path)
    assert agnostic.describe().endswith("query=agnostic")
    # A method entry's own modes: agnostic cells only where it says so, the others keep the grid's.
    per_method = {
        **config,
        "query_modes": ["aware"],
        "methods": [*config["methods"], {"name": "streamingllm", "values": [64], "query_modes": ["aware", "agnostic"]}],
    }
    path.write_text(yaml.safe_dump(per_method))
    assert [(cell.method, cell.query) for cell in cells(load_config(path))] == [
        ("snapkv", "aware"),
        ("streamingllm", "aware"),
        ("streamingllm", "agnostic"),
    ]
    for bad, message in (
        ({"query_modes": ["agnostik"]}, "'query_modes' must be a non-empty list of aware, agnostic"),
        (
            {"methods": [{"name": "snapkv", "query_modes": "agnostic"}]},
            "method 'snapkv': 'query_modes' must be a non-empty list of aware, agnostic; got 'agnostic'",
        ),
        ({"model_args": {"query": "agnostic"}}, "give the query mode as query_modes"),
    ):
        path.write_text(yaml.safe_dump({**config, **bad}))
        with pytest.raises(ValueError, match=message):
            load_config(path)
