"""kvbench-tiny: bundled, loadable offline, measured quality, and answers that depend on what the cache keeps.

Everything is measured through kvbench.generate on fixed-seed synthetic prompts (a small sample: CI time).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from kvbench import load_method, tiny
from kvbench.methods.head_pattern import read_pattern, streaming_heads
from kvbench.methods.snapkv import SnapKV
from kvbench.methods.streamingllm import StreamingLLM
from kvbench.tiny import evaluate
from kvbench.training.patterns import write_table

LENGTH = 1024  # the context the thresholds are asserted at (the model card reports longer ones too)
SAMPLES = 8
CHUNK = 256  # chunked prefill, so the eviction schedule matters


@pytest.fixture(scope="module")
def recall_prompts(bundled_tiny):
    return evaluate.samples("synth_recall", bundled_tiny[1], LENGTH, SAMPLES)


@pytest.fixture(scope="module")
def full_recall(bundled_tiny, recall_prompts):
    model, tokenizer = bundled_tiny
    return evaluate.evaluate(model, tokenizer, "synth_recall", None, chunk_size=CHUNK, prompts=recall_prompts)


def test_resolver_gives_the_bundled_checkpoint_and_leaves_other_names_alone(tmp_path):
    path = Path(tiny.resolve_pretrained("kvbench-tiny"))
    assert path == tiny.MODEL_DIR
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (path / name).is_file(), name
    assert sum(f.stat().st_size for f in path.iterdir()) <= 25 * 2**20
    assert tiny.resolve_pretrained(str(tmp_path)) == str(tmp_path)  # an existing folder, as given
    assert tiny.resolve_pretrained("org/model") == "org/model"  # a hub name, for transformers to fetch
    with pytest.raises(FileNotFoundError, match="no such folder"):
        tiny.resolve_pretrained("/some/other/model")
    with pytest.raises(FileNotFoundError, match="did you mean kvbench-tiny"):
        tiny.resolve_pretrained("kvbench-tinny")


def test_it_is_a_standard_llama_checkpoint_with_gqa_and_rope(bundled_tiny):
    model, tokenizer = bundled_tiny
    config = json.loads((tiny.MODEL_DIR / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    assert model.config.rope_parameters["rope_type"] == "default"
    assert model.config.max_position_embeddings >= LENGTH
    ids = tokenizer("Key: abcd\nValue: 1234")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Key: abcd\nValue: 1234"


@pytest.mark.slow
def test_the_build_script_reproduces_the_bundled_weights(tmp_path):
    from safetensors.torch import load_file

    from kvbench.tiny import build

    build.save(tmp_path)
    rebuilt, bundled = load_file(tmp_path / "model.safetensors"), load_file(tiny.MODEL_DIR / "model.safetensors")
    assert rebuilt.keys() == bundled.keys()
    for name in bundled:
        torch.testing.assert_close(rebuilt[name], bundled[name], rtol=1e-5, atol=1e-4, msg=name)
    assert (tmp_path / "tokenizer.json").read_text() == (tiny.MODEL_DIR / "tokenizer.json").read_text()


@pytest.mark.slow
def test_recall_at_full_attention(full_recall):
    assert full_recall.score >= 0.9
    assert full_recall.kv_footprint == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.parametrize("task, threshold", [("synth_rag", 0.9), ("synth_icl", 3 / 6)])  # ICL: 3x chance (6 labels)
def test_quality_at_full_attention(bundled_tiny, task, threshold):
    model, tokenizer = bundled_tiny
    result = evaluate.evaluate(model, tokenizer, task, None, length=LENGTH, num_samples=SAMPLES, chunk_size=CHUNK)
    assert result.score >= threshold, result


@pytest.mark.slow
def test_rerank_at_full_attention_beats_three_times_chance(bundled_tiny):
    # NDCG@10 of the ranking against a random ranking of the prompt's documents (about 0.2 at 1K).
    model, tokenizer = bundled_tiny
    result = evaluate.evaluate(model, tokenizer, "synth_rerank", None, length=LENGTH, num_samples=4, chunk_size=CHUNK)
    guess = evaluate.chance("synth_rerank", tokenizer, LENGTH, num_samples=40)
    assert 0.1 < guess < 0.3
    assert result.score >= 3 * guess, (result, guess)


@pytest.mark.slow
def test_a_small_window_loses_the_needle_while_patched_snapkv_keeps_it(bundled_tiny, recall_prompts, full_recall):
    model, tokenizer = bundled_tiny
    streaming = evaluate.evaluate(
        model,
        tokenizer,
        "synth_recall",
        lambda: StreamingLLM(sink=4, window=128),
        chunk_size=CHUNK,
        prompts=recall_prompts,
    )
    # The observation window spans the question (as the demo's: the tiny model's facts are a few tokens long); a
    # 64-token one also takes in context before it, whose attention over each chunk dilutes the needle's.
    patched = lambda: SnapKV(keep=0.05, schedule="patched", recent=16, obs_window=16)  # noqa: E731
    snapkv = evaluate.evaluate(model, tokenizer, "synth_recall", patched, chunk_size=CHUNK, prompts=recall_prompts)
    assert streaming.kv_footprint < 0.6  # the window is much smaller than the context
    assert snapkv.kv_footprint < 1.25 * streaming.kv_footprint  # a comparable footprint
    assert streaming.score < 0.5 * full_recall.score
    assert snapkv.score >= 0.9 * full_recall.score


@pytest.mark.slow
def test_chunked_snapkv_scoring_with_each_chunks_own_queries_loses_the_needle(
    bundled_tiny, recall_prompts, full_recall
):
    # The paper's "naive" chunked eviction: no chunk's own queries ask for the needle, so it is dropped.
    model, tokenizer = bundled_tiny
    chunked = evaluate.evaluate(
        model,
        tokenizer,
        "synth_recall",
        lambda: SnapKV(keep=0.05, schedule="chunked"),
        chunk_size=CHUNK,
        prompts=recall_prompts,
    )
    assert chunked.score < 0.5 * full_recall.score


@pytest.mark.slow
def test_the_quick_demo_writes_a_critical_footprint_table_and_plot_and_resumes(tmp_path, capsys):
    from kvbench.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--samples", "1", "--out", str(out)]) == 0
    table = (out / "leaderboard.md").read_text()
    printed = capsys.readouterr().out
    assert table in printed
    # it said first what it would do and about how long that takes here
    assert printed.startswith(
        "demo: 16 cells to run (16 in all: method settings x 4 tasks), 1 prompt(s) each at "
        "1024 tokens; about 0.6 min on a quiet 2-core CPU (measured)"
    )
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert header == "| method | icl | rank | rag | rank | recall | rank | rerank | rank |"
    assert "| method | icl | rag | recall | rerank |" in table  # the peaks' own table
    ranked = table[: table.index("Peak at the critical footprint")]
    cells = {
        line.split(" | ")[0][2:]: line.split(" | ")[1:]
        for line in ranked.splitlines()
        if line.startswith("| ") and not line.startswith("| method")
    }
    assert set(cells) == {"streamingllm", "snapkv", "prulong"}  # full is the baseline, not a row
    recall = header.split(" | ").index("recall") - 1
    assert cells["streamingllm"][recall].startswith(">")  # a 32-token window loses the needle: never reaches 90%
    assert cells["snapkv"][recall].startswith("<")  # patched SnapKV keeps it at its one, small budget
    assert cells["prulong"][recall].startswith("<")  # so does the trained head pattern
    results = sorted((out / "results").glob("*/results.json"))
    assert len(results) == 4 * 4  # four methods x four categories, one lm-eval results file each
    stamps = [r.stat().st_mtime_ns for r in results]
    assert main(["demo", "--quick", "--samples", "1", "--out", str(out)]) == 0  # resumes: nothing to redo
    assert capsys.readouterr().out.startswith("demo: 0 cells to run (16 in all")
    assert [r.stat().st_mtime_ns for r in results] == stamps
    assert (out / "leaderboard.md").read_text() == table


def _head_pattern_recall(model, tokenizer, prompts, method: str, pattern: str, head_sparsity: float = 0.5):
    factory = lambda: load_method(
        method, pattern=pattern, head_sparsity=head_sparsity, sink=tiny.PATTERN_SINK, window=tiny.PATTERN_WINDOW
    )
    return evaluate.evaluate(model, tokenizer, "synth_recall", factory, chunk_size=CHUNK, prompts=prompts)


@pytest.mark.slow
def test_the_trained_prulong_pattern_keeps_recall_where_random_patterns_lose_it(
    bundled_tiny, recall_prompts, full_recall, tmp_path
):
    """Half the heads streaming: PruLong's learned choice against every choice of two heads of four (their
    mean is what a uniformly random pattern with the same share scores on average)."""
    model, tokenizer = bundled_tiny
    learned = _head_pattern_recall(model, tokenizer, recall_prompts, "prulong", tiny.NAME)
    assert learned.score >= 0.9 * full_recall.score
    assert learned.kv_footprint < 0.8  # the streaming heads really hold less
    chosen = read_pattern(tiny.PATTERNS["prulong"])
    learned_streaming = set(map(tuple, streaming_heads(chosen, 0.5).nonzero().tolist()))
    scores = []
    for streaming in itertools.combinations([(0, 0), (0, 1), (1, 0), (1, 1)], 2):
        if set(streaming) == learned_streaming:
            scores.append(learned.score)
            continue
        pattern = torch.ones(2, 2)
        for head in streaming:
            pattern[head] = 0
        path = write_table(pattern, tmp_path / f"random-{len(scores)}.tsv")
        scores.append(_head_pattern_recall(model, tokenizer, recall_prompts, "prulong", str(path)).score)
    assert len(scores) == 6
    # Recall needs one head (layer 1, KV head 0): a random pattern keeps it 3 times in 6, so expect ~0.5 x full.
    random_mean = sum(scores) / len(scores)
    assert random_mean <= 0.6 * full_recall.score and learned.score - random_mean >= 0.3 * full_recall.score


@pytest.mark.slow
def test_the_trained_duoattention_gates_keep_recall_at_half_the_heads(bundled_tiny, recall_prompts, full_recall):
    model, tokenizer = bundled_tiny
    gates = read_pattern(tiny.PATTERNS["duoattention"])
    assert gates.shape == (2, 2) and gates.min() >= 0 and gates.max() <= 1
    duo = _head_pattern_recall(model, tokenizer, recall_prompts, "duoattention", tiny.NAME)
    assert duo.score >= 0.9 * full_recall.score
