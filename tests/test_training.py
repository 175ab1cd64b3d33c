"""Head-pattern training (kvbench.training): the hard-concrete gates, the min-max constraint, mixed attention,
the data, the exports and their errors, and short trainings on tiny models.

What the shipped kvbench-tiny patterns do to the model's answers is in tests/test_tiny.py.
"""

from __future__ import annotations

import json
import math
import random
import string
import subprocess
import sys

import pytest
import torch
from checkpoints import build_tokenizer, save_tiny_checkpoint
from conftest import random_prompt
from transformers import BloomConfig, BloomForCausalLM

from kvbench.engine import score_continuation
from kvbench.methods.head_pattern import read_pattern
from kvbench.methods.streamingllm import StreamingLLM
from kvbench.training import data, patterns
from kvbench.training.common import TrainSettings
from kvbench.training.duo import DuoTrainer
from kvbench.training.gates import HardConcreteGates
from kvbench.training.lagrangian import SparsityLagrangian, target_sparsity
from kvbench.training.mixing import Mix, mixing, streaming_attention
from kvbench.training.train import PruLongTrainer

# --- the hard-concrete sampler -------------------------------------------------------------------------------


@pytest.mark.parametrize("log_alpha", [-3.0, -1.0, 0.0, 0.7, 2.0, 4.5])
def test_hard_concrete_samples_match_the_closed_form(log_alpha):
    gates = HardConcreteGates(1, 40_000, init=log_alpha, init_std=0.0)  # 40,000 gates alike: one draw each
    with torch.no_grad():
        z = gates.sample(torch.Generator().manual_seed(0)).flatten()
        assert ((z >= 0) & (z <= 1)).all()
        # 40,000 Bernoulli draws: a standard error below 0.0025, so 0.012 is ~5 sigma.
        assert float((z > 0).double().mean()) == pytest.approx(float(gates.open_probability()[0, 0]), abs=0.012)
        assert float((z == 1).double().mean()) == pytest.approx(float(gates.fully_open_probability()[0, 0]), abs=0.012)
        assert float(gates.expected_sparsity()) == pytest.approx(float((z == 0).double().mean()), abs=0.012)


def test_hard_concrete_closed_form_and_initialisation_follow_the_paper():
    gates = HardConcreteGates(3, 4, generator=torch.Generator().manual_seed(0))
    assert gates.log_alpha.shape == (3, 4)
    alpha = gates.log_alpha.detach()
    assert float(alpha.mean()) == pytest.approx(4.5, abs=0.02)  # init ~ N(4.5, 0.01)
    assert 0 < float(alpha.std()) < 0.03
    # Louizos et al.: P(z > 0) = sigmoid(log_alpha - beta log(-l / r)) with beta 2/3, (l, r) = (-0.1, 1.1)
    expected = torch.sigmoid(gates.log_alpha - (2 / 3) * math.log(0.1 / 1.1))
    assert torch.allclose(gates.open_probability(), expected)
    assert gates.expected_sparsity().item() < 0.01  # every head starts (almost surely) full
    undecided = HardConcreteGates(1, 8, init=0.0)  # most samples fall inside (0, 1), where z has a gradient
    gradient = torch.autograd.grad(undecided.sample(torch.Generator().manual_seed(0)).sum(), undecided.log_alpha)[0]
    assert (gradient > 0).any() and (gradient >= 0).all()  # z grows with log_alpha
    with pytest.raises(ValueError, match="stretch interval"):
        HardConcreteGates(1, 1, stretch=(0.0, 1.1))


# --- the min-max constraint ----------------------------------------------------------------------------------


def test_lagrange_multipliers_ascend_while_the_variable_descends():
    """A toy objective (x - 0.9)^2 under the constraint x = 0.3: the multipliers' gradient steps go *up*,
    and together they pull x from its unconstrained optimum 0.9 to the constraint."""
    x = torch.nn.Parameter(torch.tensor(0.9))
    lagrangian = SparsityLagrangian()
    descend, ascend = torch.optim.SGD([x], lr=0.05), lagrangian.optimizer(lr=0.5)
    for step in range(3000):
        loss = (x - 0.9) ** 2 + lagrangian(x, 0.3)
        loss.backward()
        if step == 0:  # one step by hand: lambda1 += lr (x - t), lambda2 += lr (x - t)^2 (ascent)
            before = (float(lagrangian.lambda1), float(lagrangian.lambda2), float(x))
        descend.step()
        ascend.step()
        if step == 0:
            gap = before[2] - 0.3
            assert float(lagrangian.lambda1) == pytest.approx(before[0] + 0.5 * gap)
            assert float(lagrangian.lambda2) == pytest.approx(before[1] + 0.5 * gap**2)
            assert float(lagrangian.lambda1) > 0  # it rose: descent would have lowered it
        descend.zero_grad()
        ascend.zero_grad()
    assert float(x) == pytest.approx(0.3, abs=0.02)
    assert float(lagrangian.lambda1) > 0.5  # the price of the constraint, ~2 (0.9 - 0.3)


def test_target_sparsity_warms_up_then_holds():
    assert target_sparsity(0, 100, 0.5) == 0
    assert target_sparsity(40, 100, 0.5) == pytest.approx(0.25)
    assert target_sparsity(80, 100, 0.5) == pytest.approx(0.5)
    assert target_sparsity(99, 100, 0.5) == pytest.approx(0.5)
    assert target_sparsity(0, 100, 0.5, warmup_fraction=0) == 0.5


@pytest.mark.parametrize("target", [-0.1, 1.0, 1.5, "half"])
def test_target_sparsity_outside_0_1_is_refused_before_loading_a_model(target):
    with pytest.raises(ValueError, match=r"target sparsity .* must be in \[0, 1\)"):
        PruLongTrainer(TrainSettings(model="/nonexistent", out="/tmp/x"), target_sparsity=target)


# --- mixed attention -----------------------------------------------------------------------------------------


def _dense_streaming(query, key, value, scaling, sink, window):
    n = query.shape[2]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    visible = (j <= i) & ((j < sink) | (i - j <= window))
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=visible, scale=scaling, enable_gqa=True
    )


@pytest.mark.parametrize("sink,window,block", [(0, 1, 4), (2, 5, 3), (4, 16, 7), (30, 3, 8), (2, 100, 16)])
def test_blockwise_streaming_attention_equals_the_dense_mask(sink, window, block):
    generator = torch.Generator().manual_seed(sink + window)
    query = torch.randn(2, 4, 37, 8, generator=generator)
    key, value = torch.randn(2, 2, 37, 8, generator=generator), torch.randn(2, 2, 37, 8, generator=generator)
    got = streaming_attention(query, key, value, 0.3, sink, window, block)
    torch.testing.assert_close(got, _dense_streaming(query, key, value, 0.3, sink, window), atol=1e-6, rtol=1e-5)


def test_mixed_attention_at_the_extremes_is_full_attention_or_kvbench_streamingllm(llama):
    ids = random_prompt(48)
    with torch.no_grad():
        reference = llama(ids[None]).logits
        with mixing(llama, 2, 6):
            full = llama(ids[None], kvbench_mix=Mix(torch.ones(2, 2), 2, 6)).logits
            streaming = llama(ids[None], kvbench_mix=Mix(torch.zeros(2, 2), 2, 6, block=5)).logits
            half = llama(ids[None], kvbench_mix=Mix(torch.full((2, 2), 0.5), 2, 6)).logits
    torch.testing.assert_close(full, reference, atol=1e-5, rtol=1e-5)
    # All gates closed = every head streaming = what kvbench's engine computes under StreamingLLM, token by token.
    scored = score_continuation(llama, ids[:8], ids[8:], StreamingLLM(sink=2, window=6), chunk_size=1)
    mixed = streaming[0].log_softmax(-1)[7:-1].gather(1, ids[8:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(scored.token_logprobs), mixed, atol=1e-4, rtol=0)
    assert not torch.allclose(streaming, reference, atol=1e-3)  # the window really cut something
    assert not torch.allclose(half, reference, atol=1e-3) and not torch.allclose(half, streaming, atol=1e-3)
    assert llama.config._attn_implementation == "sdpa"  # restored


def test_gates_of_one_head_change_only_that_heads_layer_onwards(llama):
    ids = random_prompt(48, seed=1)
    gates = torch.ones(2, 2)
    gates[1, 0] = 0.0  # layer 1, KV head 0 streaming
    with torch.no_grad(), mixing(llama, 1, 4):
        hidden = llama(ids[None], kvbench_mix=Mix(gates, 1, 4), output_hidden_states=True).hidden_states
        base = llama(ids[None], kvbench_mix=Mix(torch.ones(2, 2), 1, 4), output_hidden_states=True).hidden_states
    torch.testing.assert_close(hidden[1], base[1])  # layer 0's output: untouched
    assert not torch.allclose(hidden[2][0, 10:], base[2][0, 10:], atol=1e-4)  # layer 1's: changed
    torch.testing.assert_close(hidden[2][0, :5], base[2][0, :5])  # inside the window nothing is cut


def test_a_model_without_the_attention_interface_is_refused(tmp_path):
    bloom = BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=32, n_layer=1, n_head=2))
    bloom.save_pretrained(tmp_path / "bloom")
    build_tokenizer().save_pretrained(tmp_path / "bloom")
    with pytest.raises(ValueError, match="does not route attention through transformers' AttentionInterface"):
        PruLongTrainer(TrainSettings(model=str(tmp_path / "bloom"), out=tmp_path / "out"))
    with pytest.raises(ValueError, match="AttentionInterface"), mixing(bloom, 1, 4):
        pass


# --- data ----------------------------------------------------------------------------------------------------


def test_file_data_text_and_prompt_answer_rows(tmp_path):
    tokenizer = build_tokenizer()
    (tmp_path / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20)
    text = list(data._read_file(tokenizer, tmp_path / "a.txt", 16))
    assert len(text) > 3 and all(len(s.ids) <= 16 and s.loss_mask.all() for s in text)
    rows = [{"prompt": "Question: what is the value of key 42? Answer:", "answer": " 17"}, {"text": "Document 3: the"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    qa, plain = data._read_file(tokenizer, tmp_path / "b.jsonl", 64)
    answer_len = len(tokenizer(" 17\n", add_special_tokens=False).input_ids)
    assert int(qa.loss_mask.sum()) == answer_len and qa.loss_mask[-answer_len:].all()
    assert plain.loss_mask.all()
    ids, mask = next(data.batches(iter([qa, plain]), 2, pad_id=0))
    assert ids.shape == (2, len(qa.ids)) and int(mask[1].sum()) == len(plain.ids)  # right-padded, pads masked


def test_synthetic_sequences_supervise_the_gold_or_the_given_answer():
    from kvbench import tiny

    _, tokenizer = tiny.load()
    gold = next(data.synthetic_sequences(tokenizer, ("synth_recall",), 1024, seed=3))
    asked = []
    own = next(
        data.synthetic_sequences(
            tokenizer, ("synth_recall",), 1024, seed=3, answer_fn=lambda task, prompt: asked.append(task) or "0042"
        )
    )
    assert asked == ["synth_recall"]
    supervised = tokenizer.decode(own.ids[own.loss_mask])
    assert supervised == "0042\n" and torch.equal(own.ids[~own.loss_mask], gold.ids[~gold.loss_mask])
    answer = tokenizer.decode(gold.ids[gold.loss_mask])
    assert answer.endswith("\n") and answer[:-1].isdigit() and len(answer) == 5  # a 4-digit value, then newline
    assert len(gold.ids) <= 1024


@pytest.mark.parametrize(
    "content,suffix,message",
    [
        ('{"text": "ok"}\n{oops\n', ".jsonl", r"b\.jsonl:2: not JSON"),
        ('{"question": "no"}\n', ".jsonl", r'b\.jsonl:1: each row needs "text", or "prompt" and "answer"'),
        ("a,b\n", ".csv", "must be .txt or .jsonl"),
        ("", ".txt", "no training sequence"),
    ],
)
def test_bad_training_files_are_named(tmp_path, content, suffix, message):
    path = tmp_path / f"b{suffix}"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        next(data.file_sequences(build_tokenizer(), path, 32))
    with pytest.raises(ValueError, match="not found"):
        next(data.file_sequences(build_tokenizer(), tmp_path / "missing.txt", 32))
    with pytest.raises(ValueError, match="unknown synthetic task"):
        next(data.synthetic_sequences(build_tokenizer(), ("synth_nope",)))


# --- exports -------------------------------------------------------------------------------------------------


def test_binary_export_keeps_the_top_scores_full_and_refuses_starved_layers(tmp_path):
    scores = torch.tensor([[0.1, 3.0, -2.0, 1.0], [-1.0, -3.0, -0.5, 2.0]], dtype=torch.float64)
    pattern = patterns.binary_pattern(scores, 0.5)
    assert pattern.tolist() == [[1, 1, 0, 1], [0, 0, 0, 1]]
    path = patterns.write_table(pattern, tmp_path / "p.tsv")
    assert path.read_text().splitlines()[0].split("\t") == ["1", "1", "0", "1"]
    assert torch.equal(read_pattern(path), pattern)  # what method=prulong reads
    assert patterns.binary_pattern(scores, 0.5, min_full_per_layer=1).sum() == 4
    with pytest.raises(ValueError, match=r"fewer than 1 full heads: layer 1 \(0\)"):
        patterns.binary_pattern(scores, 0.875, min_full_per_layer=1)  # 7 streaming: layer 1 keeps no full head
    with pytest.raises(ValueError, match=r"fewer than 2 full heads: layer 1 \(1\);"):
        patterns.binary_pattern(scores, 0.5, min_full_per_layer=2)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        patterns.binary_pattern(scores, 1.0)
    with pytest.raises(ValueError, match=r"min_full_per_layer must be an integer in \[0, 4\]"):
        patterns.binary_pattern(scores, 0.5, min_full_per_layer=5)


@pytest.mark.slow
def test_export_command_writes_a_pattern_and_explains_a_refusal(tmp_path):
    patterns.write_table(torch.tensor([[0.1, 3.0], [-1.0, -3.0]]), tmp_path / "scores.tsv")
    run = [
        sys.executable,
        "-m",
        "kvbench",
        "prulong",
        "export",
        str(tmp_path / "scores.tsv"),
        "--out",
        str(tmp_path / "p.tsv"),
    ]
    ok = subprocess.run(run + ["--export-sparsity", "0.5"], check=False, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert read_pattern(tmp_path / "p.tsv").tolist() == [[1, 1], [0, 0]]
    refused = subprocess.run(
        run + ["--export-sparsity", "0.5", "--min-full-per-layer", "1"], check=False, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "layer 1 (0)" in refused.stderr and "Traceback" not in refused.stderr


def test_an_impossible_export_is_refused_before_training(tmp_path):
    save_tiny_checkpoint(tmp_path / "model")
    settings = TrainSettings(model=str(tmp_path / "model"), out=tmp_path / "out")
    with pytest.raises(ValueError, match="--min-full-per-layer 1 keeps at least 2 full"):
        PruLongTrainer(settings, target_sparsity=0.5, export_sparsity=0.75, min_full_per_layer=1)


# --- short trainings ------------------------------------------------------------------------------------------


def _short_recall_rows(count: int, pairs: int = 12, seed: int = 0) -> list[dict]:
    """Short key-value prompts in the synthetic recall format (the generators start at 1K tokens)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        keys = sorted({"".join(rng.choices(string.ascii_lowercase, k=4)) for _ in range(pairs)})
        values = [str(rng.randint(1000, 9999)) for _ in keys]
        asked = rng.randrange(len(keys))
        listing = "\n".join(f"{k}: {v}" for k, v in zip(keys, values))
        rows.append(
            {
                "prompt": f"Find the value of the key in the list below.\n\n{listing}\n\nKey: {keys[asked]}\nValue:",
                "answer": values[asked],
            }
        )
    return rows


@pytest.mark.slow
def test_prulong_training_on_kvbench_tiny_reaches_the_target_and_keeps_the_retrieval_head(tmp_path):
    """kvbench-tiny retrieves a recall answer in layer 1, KV head 0 (its other layer-1 head serves ICL; layer 0
    looks at most 17 tokens back). Trained on recall with a 16-token window, PruLong must meet the 50% target
    and rank that head first."""
    (tmp_path / "recall.jsonl").write_text("\n".join(json.dumps(r) for r in _short_recall_rows(64)))
    settings = TrainSettings(
        model="kvbench-tiny",
        out=tmp_path / "out",
        data=str(tmp_path / "recall.jsonl"),
        steps=100,
        batch_size=4,
        sink=2,
        window=16,
        lr=0.3,
        log_every=5,
    )
    result = PruLongTrainer(settings, target_sparsity=0.5).train(progress=False)
    log = result["log"]
    assert log[-1]["target"] == pytest.approx(0.5) and log[0]["target"] == 0  # warmed up
    assert abs(result["expected_sparsity"] - 0.5) <= 0.05
    assert log[-1]["lambda2"] > 0  # the quadratic multiplier only grows under ascent
    scores = read_pattern(result["scores"])
    assert scores.shape == (2, 2) and int(scores.flatten().argmax()) == 2  # (layer 1, KV head 0)
    pattern = read_pattern(result["pattern"])
    assert (
        int((pattern == 0).sum()) == 2
        and pattern[1, 0] == 1
        and torch.equal(pattern, patterns.binary_pattern(scores, 0.5))
    )
    logged = [json.loads(line) for line in (tmp_path / "out" / "training_log.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 99 and json.loads((tmp_path / "out" / "settings.json").read_text())["steps"] == 100


@pytest.mark.slow
def test_duo_training_on_kvbench_tiny_keeps_the_retrieval_head_gate_highest(tmp_path):
    (tmp_path / "recall.jsonl").write_text("\n".join(json.dumps(r) for r in _short_recall_rows(32)))
    settings = TrainSettings(
        model="kvbench-tiny",
        out=tmp_path / "out",
        data=str(tmp_path / "recall.jsonl"),
        steps=40,
        batch_size=4,
        sink=2,
        window=16,
        lr=0.05,
        log_every=5,
    )
    # reg is relative to the distance: streaming kvbench-tiny's recall head moves its normalised final hidden
    # states by ~1.5e-6 (mean square), so a penalty of 0.05 (DuoAttention's default for 7B models) would
    # close every gate.
    result = DuoTrainer(settings, reg=1e-7).train(progress=False)
    gates = read_pattern(result["gates"])
    assert gates.shape == (2, 2) and gates.min() >= 0 and gates.max() <= 1
    assert int(gates.flatten().argmax()) == 2 and gates[1, 0] > 0.8  # the recall head stays full ...
    assert gates[1, 1] < 0.5 and gates[0, 0] < 0.5  # ... the re-rank head and layer 0's first head fall
    # (layer 0's KV head 1 averages tokens up to 36 back: a 16-token window nudges the hidden states, so
    # DuoAttention's distance keeps it; PruLong's next-token loss above does not)
    assert result["log"][0]["distance"] == pytest.approx(0.0, abs=1e-6)  # all gates 1: mixed == full


def test_duo_training_reads_plain_text_and_checks_its_settings(tmp_path):
    save_tiny_checkpoint(tmp_path / "model")
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 60)
    settings = TrainSettings(
        model=str(tmp_path / "model"),
        out=tmp_path / "duo",
        data=str(tmp_path / "text.txt"),
        seq_len=64,
        steps=6,
        batch_size=2,
        sink=1,
        window=4,
        lr=0.05,
        log_every=1,
    )
    result = DuoTrainer(settings, reg=1.0).train(progress=False)
    assert [r["step"] for r in result["log"]] == list(range(6))
    assert read_pattern(result["gates"]).max() < 1  # the penalty lowered the gates
    for field, value, message in [
        ("steps", 0, "steps must be a positive integer"),
        ("window", 0, "window must be an integer >= 1"),
        ("dtype", "fp8", "dtype must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            DuoTrainer(TrainSettings(**{**settings.__dict__, field: value}))
    with pytest.raises(ValueError, match="reg"):
        DuoTrainer(settings, reg=-1.0)


def test_the_gpu_recipe_runs_on_cpu_in_bfloat16_with_gradient_checkpointing(tmp_path):
    """The settings of a GPU run (bf16 weights, recomputed activations, a streaming block smaller than the
    sequence) through the same loop; the gates stay float32 and still get gradients."""
    save_tiny_checkpoint(tmp_path / "model")
    (tmp_path / "text.txt").write_text("Question: what is the value of key 42? Answer: 17. " * 40)
    settings = TrainSettings(
        model=str(tmp_path / "model"),
        out=tmp_path / "out",
        data=str(tmp_path / "text.txt"),
        seq_len=80,
        steps=4,
        batch_size=2,
        sink=1,
        window=8,
        lr=0.5,
        log_every=1,
        dtype="bfloat16",
        gradient_checkpointing=True,
    )
    trainer = PruLongTrainer(settings, target_sparsity=0.5, warmup_fraction=0.0)
    assert trainer.model.dtype == torch.bfloat16 and trainer.model.is_activation_checkpointing
    assert trainer.model.training  # transformers recomputes activations only in training mode
    attention_calls = []
    trainer.model.base_model.layers[0].self_attn.register_forward_hook(lambda *args: attention_calls.append(1))
    result = trainer.train(progress=False)
    assert len(attention_calls) == 2 * settings.steps  # once forward, once more in backward: recomputed
    assert trainer.trainable.gates.log_alpha.dtype == torch.float32
    scores = read_pattern(result["scores"])
    assert not torch.allclose(scores, torch.full_like(scores, 4.5), atol=0.1)  # the gates moved
    assert all(math.isfinite(r["lm_loss"]) for r in result["log"])
