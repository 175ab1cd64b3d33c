"""The lm-eval backend: the real `lm_eval` command with `--model kvbench`, parity with lm-eval's `hf`
backend, footprints checked against the engine, bad input, and the start-up import hook.

Runs against the installed (non-editable) package, as `scripts/dev.sh` sets it up; the tiny checkpoint
is a random-weight Llama saved locally, the tasks are in tests/data/lmeval_tasks (offline data).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import save_tiny_checkpoint
from greedy import top2_margin

from kvbench.engine import generate, score_continuation
from kvbench.methods.streamingllm import StreamingLLM

TASKS = Path(__file__).parent / "data" / "lmeval_tasks"
BIN = Path(sys.executable).parent
GEN, CHOICE = "kvbench_test_recall", "kvbench_test_choice"
STREAMING = "method=streamingllm,sink=4,window=16,chunk_size=32"
# One thread: on a shared 2-core machine torch's second thread mostly waits (tiny models, 40x slower).
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def run_lm_eval(command: list[str], model: str, model_args: str, out: Path, *extra: str):
    """Run lm-eval's CLI (`lm_eval` or `kvbench eval`) on both test tasks; return (results JSON, samples)."""
    args = [
        *command,
        "--model",
        model,
        "--model_args",
        model_args,
        "--tasks",
        f"{GEN},{CHOICE}",
        "--include_path",
        str(TASKS),
        "--limit",
        "2",
        "--device",
        "cpu",
        "--output_path",
        str(out),
        "--log_samples",
        *extra,
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [results] = glob.glob(str(out / "*" / "results_*.json"))
    samples = {
        task: [json.loads(line) for line in open(glob.glob(str(out / "*" / f"samples_{task}_*.jsonl"))[0])]
        for task in (GEN, CHOICE)
    }
    return json.load(open(results)), samples, done.stderr


@pytest.fixture(scope="module")
def streaming_run(checkpoint, tmp_path_factory):
    return run_lm_eval(
        [str(BIN / "lm_eval")], "kvbench", f"pretrained={checkpoint},{STREAMING}", tmp_path_factory.mktemp("streaming")
    )


@pytest.mark.slow
def test_lm_eval_command_reports_footprint_per_task(streaming_run):
    results, samples, _ = streaming_run
    run = results["config"]["kvbench"]
    assert run["method"] == "streamingllm" and run["method_params"] == {"kv_bits": 16, "sink": 4, "window": 16}
    assert run["chunk_size"] == 32 and run["versions"]["torch"] == torch.__version__
    assert run["wall_time_s"] > 0 and run["tokens_per_second"] > 0
    assert run["tasks"][GEN]["requests"] == 2  # --limit 2 generations
    assert run["tasks"][CHOICE]["requests"] == 8  # 2 docs x 4 choices, one loglikelihood request each
    for task in (GEN, CHOICE):
        stats = run["tasks"][task]
        assert 0 < stats["kv_footprint"] < 1 and 0 < stats["kv_peak"] < 1  # prompts are longer than 4 + 16
        assert stats["kv_peak_bytes"] > 0
    # The per-sample footprint travels on the answer (KVText.footprint) into the task's own metric.
    assert results["results"][GEN]["sample_kv_footprint,none"] == pytest.approx(run["tasks"][GEN]["kv_footprint"])
    assert all(0 < s["sample_kv_footprint"] < 1 for s in samples[GEN])
    # --log_samples rows keep everything lm-eval writes, and gain each document's measured footprint, also on a task
    # that knows nothing of kvbench (a multiple-choice question: the mean of its 4 choices' requests).
    for row in samples[CHOICE]:
        assert row["resps"] and row["doc"] and row["requests"] == 4 and 0 < row["kv_footprint"] < 1
    assert sum(r["kv_footprint"] for r in samples[CHOICE]) / 2 == pytest.approx(run["tasks"][CHOICE]["kv_footprint"])


@pytest.mark.slow
def test_without_log_samples_lm_eval_still_leaves_compact_per_sample_rows_the_scorer_reads(checkpoint, tmp_path):
    from kvbench import scoring

    args = [
        str(BIN / "lm_eval"),
        "--model",
        "kvbench",
        "--model_args",
        f"pretrained={checkpoint},{STREAMING}",
        "--tasks",
        f"{GEN},{CHOICE}",
        "--include_path",
        str(TASKS),
        "--limit",
        "2",
        "--device",
        "cpu",
        "--output_path",
        str(tmp_path),
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # A plain run says nothing spurious: no warning about a CUDA device nobody asked for, no git "fatal:" line
    # outside a git checkout.
    assert "fatal:" not in done.stderr
    assert not [line for line in done.stderr.splitlines() if "WARNING" in line and "CUDA" in line]
    [results] = glob.glob(str(tmp_path / "*" / "results_*.json"))
    date = Path(results).stem.removeprefix("results_")
    for task, metric in ((GEN, "exact_match"), (CHOICE, "acc")):
        [path] = glob.glob(str(tmp_path / "*" / f"samples_{task}_*.jsonl"))
        assert Path(path).name == f"samples_{task}_{date}.jsonl"  # beside its results file, named as lm-eval names
        rows = [json.loads(line) for line in open(path)]
        assert [r["doc_id"] for r in rows] == [0, 1] and all(metric in r and 0 < r["kv_footprint"] < 1 for r in rows)
        assert not any(key in r for r in rows for key in ("doc", "arguments", "resps"))  # no prompt, no response
    assert "kvbench_samples" not in json.load(open(results))
    [run] = scoring.load_runs([results], {GEN: "recall", CHOICE: "icl"})
    assert all(task.samples is not None and task.n == 2 for task in run.tasks)


@pytest.mark.slow
def test_task_footprint_is_the_mean_of_its_requests_measured_by_the_engine(streaming_run, checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results, samples, _ = streaming_run
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    method = StreamingLLM(sink=4, window=16)
    generations = [
        generate(
            model,
            tokenizer.encode(s["arguments"]["gen_args_0"]["arg_0"]),
            method,
            tokenizer=tokenizer,
            chunk_size=32,
            max_new_tokens=8,
            stop=["\n", ".", "</s>"],
        )
        for s in samples[GEN]
    ]
    # Exact: the same computation as the lm_eval process's (one thread there by ENV, here by one_thread)
    assert [g.text for g in generations] == [s["resps"][0][0] for s in samples[GEN]]
    scorings = []
    for sample in samples[CHOICE]:
        for arguments in sample["arguments"].values():
            context, continuation = arguments["arg_0"], arguments["arg_1"]
            context_ids = tokenizer.encode(context)
            whole = tokenizer.encode(context + continuation)
            scorings.append(score_continuation(model, context_ids, whole[len(context_ids) :], method, chunk_size=32))
    tasks = results["config"]["kvbench"]["tasks"]
    for task, stats in ((GEN, [g.stats for g in generations]), (CHOICE, [s.stats for s in scorings])):
        for key in ("kv_footprint", "kv_peak", "kv_peak_bytes"):
            mean = sum(getattr(s, key) for s in stats) / len(stats)
            assert tasks[task][key] == pytest.approx(mean, rel=1e-9), (task, key)
    assert len({s.stats.kv_footprint for s in scorings}) > 1  # a real mean over different requests


@pytest.mark.slow
def test_plain_hf_backend_still_works_and_kvbench_eval_gives_the_same_result(
    streaming_run, checkpoint, tmp_path_factory
):
    hf, _, _ = run_lm_eval([str(BIN / "lm_eval")], "hf", f"pretrained={checkpoint}", tmp_path_factory.mktemp("hf"))
    assert set(hf["results"]) == {GEN, CHOICE} and "kvbench" not in hf["config"]

    results, samples, _ = streaming_run
    again, again_samples, _ = run_lm_eval(
        [str(BIN / "kvbench"), "eval"],
        "kvbench",
        f"pretrained={checkpoint},{STREAMING}",
        tmp_path_factory.mktemp("eval"),
    )
    assert again["results"] == results["results"]
    for key in ("method", "method_params", "chunk_size", "tasks", "tokens"):
        assert again["config"]["kvbench"][key] == results["config"]["kvbench"][key]
    assert [s["resps"] for s in again_samples[GEN]] == [s["resps"] for s in samples[GEN]]


# The two backends' logits differ by ~2e-7 here (measured) and their log-likelihoods are held to 1e-4: a margin of
# 2e-4 decides an argmax the same way in both, on any CPU. (The closest greedy step here: 4.7e-4.)
DECISIVE = 2e-4


def continuation_margins(model, tokenizer, context: str, continuation: str) -> torch.Tensor:
    """Per continuation token (tokenized as lm-eval does): its logit minus the best other token's, from the plain
    model. Positive: it is the argmax there."""
    context_ids, whole = tokenizer.encode(context), torch.tensor(tokenizer.encode(context + continuation))
    count = len(whole) - len(context_ids)
    with torch.no_grad():
        logits = model(whole[None, :-1]).logits[0, -count:]
    target = whole[-count:, None]
    return logits.gather(1, target)[:, 0] - logits.scatter(1, target, float("-inf")).max(-1).values


def test_full_through_kvbench_answers_as_lm_evals_hf_backend(checkpoint, monkeypatch):
    """Two computations (transformers' sdpa forward, kvbench's attention) agree up to rounding, so their greedy
    answers, is_greedy flags and acc can be demanded equal only where no argmax behind them is a near-tie. The
    margins of these fixed prompts are asserted: a change that brings one to a near-tie fails with that reason
    instead of flipping an answer on some CPUs only."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kvbench.lmeval import backend as backend_module
    from kvbench.lmeval.hook import install

    install()
    steps = []  # the logits each of the kvbench backend's greedy tokens was chosen from

    def recording(*args, **kwargs):
        if "tokenizer" not in kwargs:  # a one-token log-likelihood: its margin is checked below
            return generate(*args, **kwargs)
        result = generate(*args, **{**kwargs, "return_logits": True})
        steps.append(result.logits)
        return result

    answers = {}
    for model, args in (("hf", f"pretrained={checkpoint}"), ("kvbench", f"pretrained={checkpoint},method=full")):
        with monkeypatch.context() as patch:
            patch.setattr(backend_module, "generate", recording)
            out = lm_eval.simple_evaluate(
                model=model,
                model_args=args,
                tasks=[GEN, CHOICE],
                limit=3,
                device="cpu",
                task_manager=TaskManager(include_defaults=False, include_path=str(TASKS)),
                log_samples=True,
            )
        answers[model] = out
    hf, kv = answers["hf"], answers["kvbench"]
    margins = [top2_margin(logits) for generation in steps for logits in generation]
    assert len(steps) == 3 and min(margins) > DECISIVE, f"a greedy step nearly ties: top-1 - top-2 = {margins}"
    assert [s["resps"] for s in kv["samples"][GEN]] == [s["resps"] for s in hf["samples"][GEN]]
    assert any(s["resps"][0][0] for s in hf["samples"][GEN])  # not trivially empty answers

    plain = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    for ours, theirs in zip(kv["samples"][CHOICE], hf["samples"][CHOICE], strict=True):
        for (lp, greedy), (lp_hf, greedy_hf), arguments in zip(
            [r[0] for r in ours["resps"]], [r[0] for r in theirs["resps"]], theirs["arguments"], strict=True
        ):
            assert float(lp) == pytest.approx(float(lp_hf), abs=1e-4)
            margin = continuation_margins(plain, tokenizer, *arguments)  # (context, continuation)
            assert (margin.abs() > DECISIVE).all(), f"is_greedy rests on a near-tie: margins {margin.tolist()}"
            assert greedy == greedy_hf
        # acc is the argmax over the choices' log-likelihoods: decisive where the best two are apart
        best, second = sorted((float(r[0][0]) for r in theirs["resps"]), reverse=True)[:2]
        assert best - second > DECISIVE, f"two choices nearly tie ({best} vs {second}): acc could go either way"
    assert kv["results"][CHOICE]["acc,none"] == hf["results"][CHOICE]["acc,none"]
    assert kv["config"]["kvbench"]["tasks"][CHOICE]["kv_footprint"] == pytest.approx(1.0)


# ---- bad input, truncation, batch size, chat template: the backend in this process ----


def backend(checkpoint, **args):
    from kvbench.lmeval.backend import KVBenchLM

    return KVBenchLM(pretrained=str(checkpoint), **args)


def test_unknown_method_lists_the_known_ones(checkpoint):
    with pytest.raises(ValueError, match="unknown method 'snapkvv'; known methods: .*full.*streamingllm"):
        backend(checkpoint, method="snapkvv")


@pytest.mark.parametrize(
    "params, named",
    [
        ({"windw": 16}, "no parameter 'windw'"),
        ({"window": "many"}, "parameter 'window' of method 'streamingllm' must be int"),
        ({"window": 1.5}, "parameter 'window' of method 'streamingllm' must be int"),  # lm-eval parsed "1.5"
    ],
)
def test_bad_method_parameter_is_named_with_the_methods_parameters(checkpoint, params, named):
    with pytest.raises(ValueError) as error:
        backend(checkpoint, method="streamingllm", **params)
    assert named in str(error.value)
    assert "sink (default 128)" in str(error.value) and "window (default 1024)" in str(error.value)
    assert "chunk_size" in str(error.value)  # a misspelt backend argument is recognisable too


def test_a_kernel_that_cannot_run_is_refused_at_load_and_the_one_that_runs_is_recorded(checkpoint):
    with pytest.raises(ValueError, match="attn=flash runs the flash-attn package on CUDA; this model is on the CPU"):
        backend(checkpoint, attn="flash")
    lm = backend(checkpoint)
    assert lm.get_model_info()["kvbench"]["attention_kernel"] == {
        "full attention": "cpu-fused (aten._scaled_dot_product_flash_attention_for_cpu)"
    }


@pytest.fixture
def backend_log(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("lm_eval"), "propagate", True)  # lm-eval's logging set-up turns it off
    caplog.set_level(logging.INFO, logger="lm_eval.models.kvbench")
    return caplog


def instance(request_type, arguments, task="t"):
    from lm_eval.api.instance import Instance

    return Instance(request_type, doc={}, arguments=arguments, idx=0, metadata=(task, 0, 1))


def test_long_prompt_is_left_truncated_with_a_warning_saying_how_much(checkpoint, backend_log):
    lm = backend(checkpoint, max_length=64)
    prompt = "Question: what is the value of key 42? Answer: 17. " * 12
    ids = lm.tok_encode(prompt)
    assert len(ids) > 64
    [answer] = lm.generate_until([instance("generate_until", (prompt, {"until": ["\n"], "max_gen_toks": 8}))])
    expected = generate(lm.model, ids[-56:], lm.method, tokenizer=lm.tokenizer, max_new_tokens=8, stop=["\n", "</s>"])
    assert answer == expected.text and answer.footprint["tokens"] == expected.stats.tokens
    assert f"{len(ids) - 56} tokens were cut from the left" in backend_log.text
    assert f"a prompt of {len(ids)} tokens" in backend_log.text

    backend_log.clear()
    context = prompt.rstrip()  # lm-eval moves a context's trailing spaces into the continuation
    [(logprob, _)] = lm.loglikelihood([instance("loglikelihood", (context, " 17."))])
    whole = lm.tok_encode(context + " 17.")
    continuation = whole[len(lm.tok_encode(context)) :]
    kept = whole[-65:]
    direct = score_continuation(lm.model, kept[: -len(continuation)], continuation, lm.method)
    assert logprob == pytest.approx(direct.logprob, abs=1e-5)
    assert f"{len(whole) - 65} tokens were cut from the left" in backend_log.text


def test_a_larger_batch_size_is_explained_once_and_never_padded(checkpoint, backend_log):
    lm = backend(checkpoint, batch_size="8", method="streamingllm", window=16, sink=4)
    lines = [r.message for r in backend_log.records if "batch_size" in r.message]
    assert len(lines) == 1 and "one sequence at a time" in lines[0]
    prompts = ["The quick brown fox jumps over the lazy dog. " * k for k in (2, 6)]
    answers = lm.generate_until(
        [instance("generate_until", (p, {"until": ["\n"], "max_gen_toks": 4})) for p in prompts]
    )
    # each request ran at its own length: no padding to the longest
    assert [a.footprint["tokens"] for a in answers] == [len(lm.tok_encode(p)) + 3 for p in prompts]
    assert lm.get_model_info()["kvbench"]["tasks"]["t"]["requests"] == 2


def test_chat_template_is_applied_as_lm_evals_hf_backend_does(checkpoint):
    lm = backend(checkpoint)
    lm.tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    history = [{"role": "user", "content": "What is 2+2?"}]
    assert lm.chat_template(True) == lm.tokenizer.chat_template
    assert lm.apply_chat_template(history) == "<user>What is 2+2?\n<assistant>"
    assert lm.tokenizer_name == str(checkpoint).replace("/", "__")


# ---- the start-up hook ----


def test_interpreter_start_imports_no_kvbench_torch_or_lm_eval():
    code = "import sys; print(' '.join(sorted(sys.modules)))"
    modules = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV).stdout.split()
    assert "kvbench_lmeval_hook" in modules  # the .pth hook is installed and ran
    heavy = [m for m in modules if m.split(".")[0] in ("kvbench", "torch", "lm_eval", "transformers")]
    assert heavy == []


@pytest.mark.slow
def test_hook_registers_kvbench_after_lm_evals_own_backends(tmp_path):
    code = (
        "from lm_eval.api.registry import get_model, model_registry\n"
        "print(get_model('hf').__name__, get_model('kvbench').__name__, len(model_registry))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    hf, ours, count = done.stdout.split()
    assert (hf, ours) == ("HFLM", "KVBenchLM") and int(count) > 30  # every built-in backend is still there


@pytest.mark.slow
def test_hook_makes_kvbench_tasks_visible_to_the_task_manager(tmp_path):
    # A stand-in kvbench on PYTHONPATH with a task folder, as the installed package will ship kvbench/tasks/.
    (tmp_path / "kvbench" / "tasks" / "recall").mkdir(parents=True)
    (tmp_path / "kvbench" / "__init__.py").write_text("")
    folder = tmp_path / "kvbench" / "tasks" / "recall"
    (folder / "t.yaml").write_text((TASKS / f"{GEN}.yaml").read_text().replace(GEN, "kvbench_hook_probe"))
    (folder / "kvbench_test_data.py").write_text((TASKS / "kvbench_test_data.py").read_text())
    code = (
        "from lm_eval.tasks import TaskManager\n"
        "print('kvbench_hook_probe' in TaskManager().all_tasks, "
        "'kvbench_hook_probe' in TaskManager(include_defaults=False, include_path=[]).all_tasks)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**ENV, "PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False"]


@pytest.mark.slow
def test_kvbench_synthetic_tasks_run_end_to_end_through_plain_lm_eval(checkpoint, tmp_path):
    """`lm_eval --model kvbench --tasks kvbench_synth`: kvbench's own tasks, found with no --include_path,
    generated offline with the model's tokenizer, each sample carrying its measured footprint."""
    args = [
        str(BIN / "lm_eval"),
        "--model",
        "kvbench",
        "--tasks",
        "kvbench_synth",
        "--limit",
        "2",
        "--model_args",
        f"pretrained={checkpoint},method=snapkv,keep=0.3,recent=8,obs_window=8,chunk_size=128",
        "--metadata",
        json.dumps({"context_length": 1024, "num_samples": 2}),
        "--device",
        "cpu",
        "--output_path",
        str(tmp_path),
        "--log_samples",
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [results] = glob.glob(str(tmp_path / "*" / "results_*.json"))
    results = json.load(open(results))
    synthetic = ["kvbench_synth_recall", "kvbench_synth_rag", "kvbench_synth_rerank", "kvbench_synth_icl"]
    tallies = results["config"]["kvbench"]["tasks"]
    for task in synthetic:
        assert 0 < tallies[task]["kv_footprint"] < 1 and tallies[task]["requests"] == 2
        [samples] = glob.glob(str(tmp_path / "*" / f"samples_{task}_*.jsonl"))
        per_sample = [json.loads(line)["kv_footprint"] for line in open(samples)]
        assert sum(per_sample) / 2 == pytest.approx(tallies[task]["kv_footprint"], abs=1e-9)
        # which data ran: generated, by which generator and version, seed and length
        assert results["config"]["kvbench"]["data"][task] == {
            "data": "generated",
            "generator": "kvbench.data.synth",
            "version": 1,
            "seed": 42,
            "context_length": 1024,
        }


def test_bundled_tiny_model_loads_by_name():
    from kvbench.lmeval.backend import KVBenchLM
    from kvbench.tiny import MODEL_DIR

    lm = KVBenchLM(pretrained="kvbench-tiny", method="streamingllm", window="64")
    assert lm.model.config.num_key_value_heads < lm.model.config.num_attention_heads  # the bundled GQA Llama
    assert lm.model.config.vocab_size == len(lm.tokenizer) and (MODEL_DIR / "tokenizer.json").is_file()


# ---- a newcomer's mistakes: one line saying what is wrong and what to do, under lm_eval and kvbench eval ----

MISTAKES = [
    ("pretrained=/no/such/model", "pretrained=/no/such/model: no such folder; point pretrained= at a checkpoint"),
    ("pretrained=kvbench-tiy", "pretrained=kvbench-tiy: no such model; did you mean kvbench-tiny (the bundled model)?"),
    ("pretrained=kvbench-tiny,method=streamingllm,window=-5", "window must be an integer >= 1; got -5;"),
    ("pretrained=kvbench-tiny,method=nosuch", "unknown method 'nosuch'; known methods: adakv, cake, chunkkv"),
]


def in_process(command: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`lm_eval ARGS` or `kvbench eval ARGS` in this process, as their entry points run them: (exit code, stderr)."""
    from lm_eval.__main__ import cli_evaluate

    from kvbench.cli import main

    monkeypatch.setattr(sys, "argv", ["lm_eval", *argv])  # both read it; restored after the test
    for name in ("", "lm_eval"):  # lm-eval's logging set-up binds handlers to this test's captured stderr: undone after
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
        monkeypatch.setattr(logger, "level", logger.level)
    try:
        code = cli_evaluate() if command == "lm_eval" else main(["eval", *argv])
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "command, model_args, message",
    [("lm_eval", *mistake) for mistake in MISTAKES] + [("kvbench eval", *MISTAKES[0]), ("kvbench eval", *MISTAKES[2])],
    ids=["path", "misspelt", "range", "method", "eval-path", "eval-range"],
)
def test_mistakes_are_one_line_errors(command, model_args, message, monkeypatch, capsys, tmp_path):
    """In this process (the hook's one-line errors are what is tested); tests/test_lmeval.py's real subprocesses
    below run each entry point as a user does."""
    monkeypatch.chdir(tmp_path)
    code, stderr = in_process(
        command,
        [
            "--model",
            "kvbench",
            "--model_args",
            model_args,
            "--tasks",
            "kvbench_synth_recall",
            "--metadata",
            json.dumps({"context_length": 1024, "num_samples": 1}),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 2
    [line] = [line for line in stderr.splitlines() if line.startswith("kvbench: error:")]
    assert message in line
    assert "Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["lm_eval", "kvbench eval"])
def test_each_entry_point_prints_a_mistake_as_one_line(command, tmp_path):
    args = [
        str(BIN / command.split()[0]),
        *command.split()[1:],
        "--model",
        "kvbench",
        "--model_args",
        MISTAKES[2][0],
        "--tasks",
        "kvbench_synth_recall",
        "--metadata",
        json.dumps({"context_length": 1024, "num_samples": 1}),
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert done.returncode == 2
    [line] = [line for line in done.stderr.splitlines() if line.startswith("kvbench: error:")]
    assert MISTAKES[2][1] in line and "Traceback" not in done.stderr


def test_lm_evals_own_task_index_is_reused_until_a_yaml_changes(tmp_path, monkeypatch):
    from kvbench.lmeval.hook import _cached_index

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "tasks"
    (root / "a").mkdir(parents=True)
    (root / "a" / "one.yaml").write_text("task: one\n")
    builds = []

    def build(paths, resolve_includes=True):
        builds.append(list(paths))
        return {"one": f"entry {len(builds)}"}

    assert _cached_index(build, root) == {"one": "entry 1"}
    assert _cached_index(build, root) == {"one": "entry 1"} and len(builds) == 1  # read back, not rebuilt
    (root / "a" / "one.yaml").write_text("task: one\ndescription: changed\n")
    assert _cached_index(build, root) == {"one": "entry 2"} and len(builds) == 2  # a changed file: indexed again


def test_lm_evals_response_cache_is_refused_because_it_would_drop_the_measurement(monkeypatch, capsys, tmp_path):
    """--use_cache answers a repeated run's requests without the backend, so the footprint of each would be lost
    (the results file kept scores beside `tasks: {}`): refused in one line that points at the sweep's resume."""
    monkeypatch.chdir(tmp_path)
    argv = ["--model", "kvbench", "--model_args", "pretrained=kvbench-tiny,method=full", "--tasks"]
    argv += ["kvbench_synth_recall", "--metadata", json.dumps({"context_length": 1024, "num_samples": 1})]
    code, stderr = in_process("lm_eval", [*argv, "--use_cache", str(tmp_path / "responses")], monkeypatch, capsys)
    assert code == 2
    [line] = [line for line in stderr.splitlines() if line.startswith("kvbench: error:")]
    assert "--use_cache" in line and "kvbench sweep" in line
    assert "Traceback" not in stderr


def test_a_results_file_without_task_tallies_is_refused_for_that_reason(tmp_path):
    from kvbench.scoring import read_run

    path = tmp_path / "results_cached.json"
    kv = {"method": "full", "tasks": {}, "requests": 0, "tokens": 0}
    path.write_text(json.dumps({"results": {"kvbench_synth_recall": {"acc,none": 1.0}}, "config": {"kvbench": kv}}))
    with pytest.raises(ValueError, match="no per-task tallies.*--use_cache"):
        read_run(path, {})
