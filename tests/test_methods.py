"""The paper's methods and the post-fill family: formula, peaks, behaviour on a model, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import random_prompt, tiny_model
from greedy import assert_same_greedy
from transformers import LlamaConfig, LlamaForCausalLM

import kvbench
from kvbench import generate
from kvbench.cache import KVCache
from kvbench.engine import kvbench_attention, prefill, score_continuation
from kvbench.method import KeepView, ModelShape, Phase
from kvbench.methods import BUILTIN_METHODS
from kvbench.methods.duoattention import DuoAttention
from kvbench.methods.full import Full
from kvbench.methods.l2norm import L2Norm
from kvbench.methods.pyramidkv import PyramidKV
from kvbench.methods.snapkv import SnapKV
from kvbench.methods.streamingllm import StreamingLLM
from kvbench.testing import format_report, run_checks

CASES = json.loads((Path(__file__).parent / "data" / "paper_formula_cases.json").read_text())["cases"]


@pytest.fixture(scope="module")
def model():
    # 2 layers x 2 KV heads: head shares of 1/4 and 3/4 are whole numbers of heads.
    return tiny_model("llama", hidden_size=32, intermediate_size=64)


def write_pattern(path: Path, rows) -> str:
    path.write_text("\n".join("\t".join(str(v) for v in row) for row in rows) + "\n")
    return str(path)


def run_case(model, case, method):
    return generate(
        model,
        random_prompt(case["prompt_len"]),
        method,
        chunk_size=case["chunk_size"],
        max_new_tokens=case["decode_steps"] + 1,
        eos_token_id=[],
    ).stats


@pytest.mark.parametrize(
    "case", [c for c in CASES if c["kind"] == "chunked_keep"], ids=lambda c: f"{c['prompt_len']}-{c['keep']}"
)
def test_snapkv_chunked_matches_the_papers_formula(model, case):
    method = SnapKV(keep=case["keep"], recent=case["always_keep_window"], schedule="chunked")
    stats = run_case(model, case, method)
    assert stats.kv_footprint == pytest.approx(case["footprint"], abs=1e-6)
    assert stats.kv_peak == pytest.approx(case["peak"], abs=1e-6)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c["kind"] == "head_mix"],
    ids=lambda c: f"{c['prompt_len']}-{c['streaming_head_share']}",
)
def test_duoattention_matches_the_papers_head_mix(model, case, tmp_path):
    pattern = write_pattern(tmp_path / "gates.tsv", [[0.9, 0.2], [0.4, 0.7]])
    method = DuoAttention(
        pattern=pattern, head_sparsity=case["streaming_head_share"], sink=case["sink"], window=case["window"]
    )
    assert method.streaming.float().mean() == case["streaming_head_share"]
    stats = run_case(model, case, method)
    assert stats.kv_footprint == pytest.approx(case["footprint"], abs=1e-6)
    assert stats.kv_peak == pytest.approx(case["peak"], abs=1e-6)


@pytest.mark.parametrize("method_class", [SnapKV, PyramidKV])
def test_postfill_peaks_higher_than_chunked(model, method_class):
    run = dict(chunk_size=128, max_new_tokens=4, eos_token_id=[])
    prompt = random_prompt(1024)
    postfill = generate(model, prompt, method_class(keep=0.3, schedule="postfill"), **run).stats
    chunked = generate(model, prompt, method_class(keep=0.3, schedule="chunked"), **run).stats
    assert postfill.kv_peak > chunked.kv_peak
    assert postfill.kv_peak_bytes > chunked.kv_peak_bytes
    # Post-fill holds the whole prompt once, before its eviction; chunked eviction never does.
    assert postfill.kv_peak == pytest.approx(1024 / 1027, abs=1e-9)


# ---- behaviour on a model: a planted fact far from the end ----

NEEDLE, NEEDLE_POSITION, PROMPT_LEN = 0, 20, 600


def matching_model():
    """One layer whose queries and keys are the same projection of a token, so a query attends to
    earlier copies of its own token (content-based lookup, like a retrieval head). RoPE is made
    nearly position-free (huge theta, projection onto its slowest dimensions) so distance does not
    blur the match."""
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=1e9,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    attention = model.model.layers[0].self_attn
    head_dim = 16
    slow = [4, 5, 6, 7, 12, 13, 14, 15]  # rotary dims (i, i + 8) with the lowest frequencies
    projection = torch.zeros(head_dim, 64)
    projection[slow] = torch.randn(len(slow), 64) * 3.0
    with torch.no_grad():
        attention.q_proj.weight.copy_(projection.repeat(4, 1))
        attention.k_proj.weight.copy_(projection.repeat(2, 1))
    return model


def planted_prompt():
    """Filler from tokens 9..63; the needle (token 0) planted once; a question at the end whose
    other tokens (1..8) occur nowhere else, so the needle is the only thing it looks up."""
    generator = torch.Generator().manual_seed(7)
    prompt = torch.randint(9, 64, (PROMPT_LEN,), generator=generator)
    prompt[NEEDLE_POSITION] = NEEDLE
    prompt[-16:] = torch.randint(1, 9, (16,), generator=generator)
    prompt[-3] = NEEDLE
    return prompt


def prefilled_cache(model, method, prompt, chunk_size) -> KVCache:
    cache = KVCache(ModelShape.from_config(model.config), method)
    method.bind(cache.shape)
    with kvbench_attention(model), torch.inference_mode():
        prefill(model, cache, prompt, chunk_size)
    return cache


def held_after_prompt(model, method, chunk_size=128):
    cache = prefilled_cache(model, method, planted_prompt(), chunk_size)
    positions = [group.positions for group in cache.layers[0].groups]
    footprint = cache.ledger.stats(PROMPT_LEN).kv_footprint
    return torch.cat(positions), footprint


def test_planted_fact_lost_by_streaming_kept_by_patched_snapkv():
    model = matching_model()
    streaming_held, streaming_footprint = held_after_prompt(model, StreamingLLM(sink=4, window=64))
    patched_held, patched_footprint = held_after_prompt(
        model, SnapKV(keep=0.05, recent=16, obs_window=16, kernel=1, schedule="patched")
    )
    naive_held, _ = held_after_prompt(model, SnapKV(keep=0.05, recent=16, obs_window=16, kernel=1, schedule="chunked"))

    assert not (streaming_held == NEEDLE_POSITION).any()  # outside the window: gone
    assert (patched_held == NEEDLE_POSITION).any(dim=1).all()  # every KV head kept it
    # Naive chunked eviction scores chunk 0 with chunk 0's own queries, which never ask for it.
    assert not (naive_held == NEEDLE_POSITION).any(dim=1).all()
    assert patched_footprint < 1.5 * streaming_footprint  # at a comparable footprint


# ---- DuoAttention at the ends of its knob ----


def test_duoattention_all_streaming_is_streamingllm_and_none_is_full(model, tmp_path):
    pattern = write_pattern(tmp_path / "gates.tsv", [[0.9, 0.2], [0.4, 0.7]])
    prompt = random_prompt(300, seed=3)
    run = dict(chunk_size=64, max_new_tokens=5, eos_token_id=[], return_logits=True)

    def same_greedy(method, reference):
        got, want = generate(model, prompt, method, **run), generate(model, prompt, reference, **run)
        assert_same_greedy(got.token_ids, got.logits, want.token_ids, want.logits, atol=1e-5, rtol=1e-5)

    same_greedy(DuoAttention(pattern=pattern, head_sparsity=1.0, sink=8, window=32), StreamingLLM(sink=8, window=32))
    same_greedy(DuoAttention(pattern=pattern, head_sparsity=0.0, sink=8, window=32), Full())


def test_duoattention_streaming_heads_really_hold_only_sink_and_window(model, tmp_path):
    pattern = write_pattern(tmp_path / "gates.tsv", [[0.9, 0.2], [0.4, 0.7]])
    stats = generate(
        model,
        random_prompt(400),
        DuoAttention(pattern=pattern, head_sparsity=0.5, sink=8, window=32),
        chunk_size=400,
        max_new_tokens=1,
    ).stats
    shape = ModelShape.from_config(model.config)
    per_entry = 2 * shape.head_dim * 4
    assert stats.kv_peak_bytes == stats.kv_entries * per_entry
    # The peak: layer 0 after its eviction (a full head: 400, a streaming head: 8 + 32), plus layer 1
    # before its eviction (both heads: 400 each).
    assert stats.kv_entries == (400 + 40) + 2 * 400


# ---- quantized storage ----


@pytest.mark.parametrize("bits, low, high", [(8, 0.5, 0.55), (4, 0.25, 0.3)])
def test_quantized_kv_shrinks_bytes_and_changes_logits_slightly(bits, low, high):
    model = tiny_model("llama", hidden_size=128, num_attention_heads=2, num_key_value_heads=1).to(torch.bfloat16)
    prompt = random_prompt(200, seed=4)
    run = dict(chunk_size=64, max_new_tokens=4, eos_token_id=[], return_logits=True)
    full = generate(model, prompt, Full(), **run)
    quantized = generate(model, prompt, Full(kv_bits=bits), **run)
    ratio = quantized.stats.kv_peak_bytes / full.stats.kv_peak_bytes
    # bits/16 of the data, plus an fp16 scale and minimum per 64 channels of each key and value.
    assert low <= ratio <= high
    assert quantized.stats.kv_footprint == pytest.approx(ratio, abs=1e-9)  # counted by bytes
    # Logits are compared where both runs saw the same tokens: the first step (chunks 2-4 of the prefill attend
    # over the quantized chunks before them) and a fixed continuation fed to both (teacher forcing). Free-running
    # greedy steps are not comparable: once the noise flips one near-tied token, every later logit differs.
    bound = (0.05 if bits == 8 else 0.25) * full.logits[0].abs().max().item()  # measured: 8x and 4x below
    difference = (quantized.logits[0] - full.logits[0]).abs().max().item()
    assert 0 < difference < bound
    continuation = random_prompt(16, seed=5)
    want = score_continuation(model, prompt, continuation, Full(), chunk_size=64)
    got = score_continuation(model, prompt, continuation, Full(kv_bits=bits), chunk_size=64)
    assert got.stats.kv_peak_bytes / want.stats.kv_peak_bytes == pytest.approx(ratio, abs=1e-9)
    forced = (torch.tensor(got.token_logprobs) - torch.tensor(want.token_logprobs)).abs().max().item()
    assert 0 < forced < bound


def test_quantization_combines_with_eviction():
    model = tiny_model("llama", hidden_size=128, num_attention_heads=2, num_key_value_heads=1).to(torch.bfloat16)
    run = dict(chunk_size=64, max_new_tokens=2, eos_token_id=[])
    prompt = random_prompt(512, seed=5)
    evicting = generate(model, prompt, StreamingLLM(sink=4, window=60), **run).stats.kv_footprint
    both = generate(model, prompt, StreamingLLM(sink=4, window=60, kv_bits=8), **run).stats.kv_footprint
    assert both == pytest.approx(evicting * (2 * (128 + 4 * 2)) / (2 * 128 * 2), rel=1e-9)


# ---- every method through the conformance kit ----


def conformance_params(tmp_path) -> dict[str, list[dict]]:
    pattern = write_pattern(tmp_path / "pattern.tsv", [[0.9, 0.1], [0.2, 0.8], [0.6, 0.3]])  # the kit's 3 layers
    score = {"keep": 0.3, "recent": 8, "obs_window": 8}
    return {
        "full": [{}],
        "streamingllm": [{"sink": 4, "window": 24}],
        "duoattention": [{"pattern": pattern, "sink": 4, "window": 16}],
        "prulong": [{"pattern": pattern, "sink": 4, "window": 16, "kv_bits": 8}],
        "snapkv": [{**score, "schedule": s} for s in ("postfill", "chunked", "patched")],
        "pyramidkv": [{**score, "schedule": "patched"}],
        "l2norm": [{**score, "kv_bits": 4}],
        "h2o": [score, {"budget": 40, "recent": 8, "obs_window": 8}],
        "random": [{**score, "schedule": s} for s in ("postfill", "chunked")],
        "keydiff": [{**score, "schedule": s} for s in ("postfill", "chunked")],
        "lagkv": [{**score, "lag_size": 8, "schedule": s} for s in ("postfill", "chunked", "patched")],
        "simlayerkv": [
            {"n_recent": 80, "lazy_threshold": 0.5},
            {"n_recent": 380, "lazy_threshold": 0.5, "schedule": "postfill"},
        ],
        "expected_attention": [{**score, "schedule": s} for s in ("postfill", "chunked", "patched")],
        "adakv": [{**score, "schedule": s} for s in ("postfill", "chunked", "patched")],
        "chunkkv": [{**score, "chunk_length": 4, "scorer": "expected_attention", "schedule": "chunked"}],
        "cake": [{**score, "schedule": s} for s in ("postfill", "chunked", "patched")]
        + [{**score, "scorer": "snapkv", "kernel": 3}],
        "kvzip": [{"keep": 0.3, "chunk_length": 32}, {"keep": 0.3, "layerwise": True}],
        "think": [{"channel_keep": 0.5, "window_size": 8}],
    }


@pytest.mark.slow
def test_every_builtin_method_is_listed_and_passes_the_kit(tmp_path):
    params = conformance_params(tmp_path)
    assert {m.name for m in BUILTIN_METHODS} == set(params) and set(params) <= set(kvbench.list_methods())
    for name, settings in params.items():
        for setting in settings:
            results = run_checks(name, setting)
            assert not any(r.failed for r in results), f"{name} {setting}\n{format_report(results)}"


@pytest.mark.parametrize("name", ["snapkv", "pyramidkv", "l2norm", "h2o", "tova", "random", "keydiff"])
def test_score_methods_conform_under_the_patched_schedule(name):
    # "keeps everything = full attention" compares peak bytes and entries too: the scoring-only tail is not held.
    results = run_checks(name, {"schedule": "patched"})
    assert not any(r.failed for r in results), f"{name}\n{format_report(results)}"


@pytest.mark.parametrize("schedule", ["chunked", "patched"])
def test_snapkv_scores_a_chunk_as_the_reference_does(schedule):
    """The reference (MInference's SnapKVCluster, as the paper ran it) scores a chunk from its own entries only: the
    softmax of the window's queries over the chunk (and, patched, the scoring tail), summed over the window, averaged
    over the KV head's query heads, average-pooled (kernel 5, zero padding) over the evictable entries; top k."""
    torch.manual_seed(0)
    heads, per_head, dim, past, new, window, tail = 2, 2, 8, 40, 48, 8, (8 if schedule == "patched" else 0)
    held = past + new + tail
    keys, values = torch.randn(heads, held, dim) * 2, torch.randn(heads, held, dim)
    queries = torch.randn(heads, per_head, new + tail, dim) * 2
    view = KeepView(
        layer=0,
        group=0,
        heads=[0, 1],
        phase=Phase(False, 1, 3),
        positions=torch.arange(held).expand(heads, -1),
        keys=keys,
        values=values,
        queries=queries,
        num_new=new,
        scaling=dim**-0.5,
        num_scoring=tail,
    )
    method = SnapKV(keep=0.25, recent=window, obs_window=window, schedule=schedule)
    kept = method.select(view)

    own = keys[:, past:]  # the chunk and its tail: what the window may attend to
    last = queries[:, :, -window:]
    logits = torch.einsum("hrqd,hnd->hrqn", last, own) * dim**-0.5
    position = torch.arange(held - past)
    causal = position[None, :] <= (held - past - window + torch.arange(window))[:, None]
    weights = logits.masked_fill(~causal, float("-inf")).softmax(-1).sum(2).mean(1)  # [h, chunk + tail]
    evictable = weights[:, : new - window]
    pooled = torch.nn.functional.avg_pool1d(evictable[:, None], 5, stride=1, padding=2)[:, 0]
    ranked = pooled.sort(dim=-1, descending=True).values
    k = round(0.25 * new)
    # Top k is decided by a margin far above rounding (measured: 1.5e-3 or more), so two computations pick alike.
    assert (ranked[:, k - 1] - ranked[:, k] > 1e-4).all(), "a near-tie at the k-th score: either entry may be kept"
    chosen = pooled.topk(k, dim=-1).indices + past
    always = torch.cat([torch.arange(past), torch.arange(past + new - window, held)])
    expected = torch.cat([always.expand(heads, -1), chosen], dim=-1).sort(-1).values
    assert torch.equal(kept, expected)


# ---- PyramidKV's per-layer budgets, as the reference (PyramidKVCluster) computes them ----


def pyramid(layers=32, **params) -> PyramidKV:
    method = PyramidKV(**params)
    method.bind(ModelShape(num_layers=layers, num_query_heads=4, num_kv_heads=2, head_dim=16))
    return method


# (parameters, k = the mean layer's budget by score, candidates, budgets at layers 0, 1, 31), worked by hand:
# smallest = k // 20, largest = 2k - smallest (clipped to candidates - recent, smallest = 2k - largest),
# step = (largest - smallest) // 31, layer l keeps largest - l x step; candidates < 2k: k everywhere.
PYRAMID_CASES = [
    # keep 0.1 of a 32K chunk: k = round(3276.8) = 3277; 163, 6391, step 6228 // 31 = 200
    ({"keep": 0.1}, 3277, 32768, (6391, 6191, 191)),
    # keep 0.3: k = 9830; 491, 19169, step 18678 // 31 = 602
    ({"keep": 0.3}, 9830, 32768, (19169, 18567, 507)),
    # keep 0.5: k = 16384 = candidates / 2, still a pyramid; 819, 31949, step 31130 // 31 = 1004
    ({"keep": 0.5}, 16384, 32768, (31949, 30945, 825)),
    # keep 0.5, recent 1024: 31949 > 32768 - 1024, clipped to 31744 with smallest 1024; step 30720 // 31 = 990
    ({"keep": 0.5, "recent": 1024}, 16384, 32768, (31744, 30754, 1054)),
    # keep 0.7: k = 22938 and 2k > candidates: SnapKV's uniform budget (the reference's short-prompt fallback)
    ({"keep": 0.7}, 22938, 32768, (22938, 22938, 22938)),
    # budget 4096 over 32768 held (post-fill): k = 4096 - 64 = 4032; 201, 7863, step 7662 // 31 = 247
    ({"budget": 4096}, 4032, 32768, (7863, 7616, 206)),
    # budget 4096 over 6000 held: 6000 < 2 x 4032, uniform
    ({"budget": 4096}, 4032, 6000, (4032, 4032, 4032)),
]


@pytest.mark.parametrize("params, k, candidates, expected", PYRAMID_CASES)
def test_pyramidkv_layer_budgets_equal_the_reference(params, k, candidates, expected):
    method = pyramid(**params)
    budgets = [method.layer_budget(layer, k, candidates) for layer in range(32)]
    assert (budgets[0], budgets[1], budgets[31]) == expected
    assert all(a - b == budgets[0] - budgets[1] for a, b in zip(budgets, budgets[1:]))  # arithmetic
    largest, smallest = budgets[0], 2 * k - budgets[0]
    remainder = (largest - smallest) % 31 if largest != k else 0
    # the mean is SnapKV's k, up to the reference's integer step: layers x remainder / 2 more in all
    assert sum(budgets) == 32 * k + 32 * remainder // 2


@pytest.mark.parametrize("keep, excess", [(0.35, 0), (0.1, 128), (0.6, 0)])
def test_pyramidkv_keeps_as_many_entries_as_snapkv_in_total(keep, excess):
    """On a 32-layer model, one 1024-token chunk: held entries summed over layers. keep 0.35 (k = 358) has a
    step that divides exactly; keep 0.1 (k = 102: 5..199, 194 // 31 = 6 rest 8) keeps 8 x 32 / 2 = 128 more
    per KV head, as the reference does; keep 0.6 is below the pyramid's reach (uniform)."""
    model = tiny_model("llama", num_hidden_layers=32, hidden_size=32, intermediate_size=32)
    held = {}
    for method_class in (SnapKV, PyramidKV):
        method = method_class(keep=keep, schedule="chunked")
        cache = prefilled_cache(model, method, random_prompt(1024), chunk_size=1024)
        held[method_class.name] = [layer.groups[0].num_held for layer in cache.layers]
    assert sum(held["pyramidkv"]) == sum(held["snapkv"]) + excess
    if keep < 0.5:
        assert held["pyramidkv"][0] > held["snapkv"][0] > held["pyramidkv"][-1]  # a pyramid, not SnapKV again


def test_l2norm_leaves_the_first_skip_layers_whole(model):
    for skip, whole in ((2, [True, True]), (1, [True, False]), (0, [False, False])):
        cache = prefilled_cache(model, L2Norm(keep=0.2, recent=8, skip_layers=skip), random_prompt(256), 64)
        assert [layer.groups[0].num_held == 256 for layer in cache.layers] == whole


# ---- bad input ----


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("snapkv", {"keep": 0}, r"keep must be in \(0, 1\]; got 0"),
        ("snapkv", {"keep": 1.5}, r"keep must be in \(0, 1\]; got 1.5"),
        ("pyramidkv", {"budget": 0}, "budget must be an integer >= 1; got 0"),
        ("h2o", {"keep": 0.3, "budget": 100}, "give either keep .* or budget .*, not both"),
        ("snapkv", {"schedule": "eager"}, "schedule must be one of postfill, chunked, patched; got 'eager'"),
        ("l2norm", {"kv_bits": 2}, "kv_bits must be one of 16, 8, 4; got 2"),
        ("snapkv", {"kernel": 4}, "kernel must be an odd integer >= 1; got 4"),
        ("duoattention", {}, "duoattention needs pattern=PATH"),
        ("duoattention", {"pattern": "/no/such/file.tsv"}, "head pattern file not found: /no/such/file.tsv"),
        ("prulong", {"pattern": "PATTERN", "head_sparsity": 1.2}, r"head_sparsity must be in \[0, 1\]; got 1.2"),
    ],
)
def test_bad_parameters(name, params, message, tmp_path):
    params = {k: (write_pattern(tmp_path / "p.tsv", [[1, 2]]) if v == "PATTERN" else v) for k, v in params.items()}
    with pytest.raises(ValueError, match=message):
        kvbench.load_method(name, **params)


def test_bad_pattern_files(tmp_path, model):
    nan = write_pattern(tmp_path / "nan.tsv", [[0.5, math.nan], [0.1, 0.2]])
    with pytest.raises(ValueError, match="holds NaN or infinite values"):
        DuoAttention(pattern=nan)
    outside = write_pattern(tmp_path / "outside.tsv", [[0.5, 3.0], [0.1, 0.2]])
    with pytest.raises(ValueError, match=r"gate values lie in \[0, 1\]; got 0.1..3"):
        DuoAttention(pattern=outside)
    wrong_shape = write_pattern(tmp_path / "shape.tsv", [[0.5, 0.1, 0.3]])
    with pytest.raises(ValueError, match=r"has shape \(1, 3\) \(layers, KV heads\); the model has \(2, 2\)"):
        generate(model, random_prompt(10), DuoAttention(pattern=wrong_shape), max_new_tokens=1)


def test_binary_pattern_files_read_like_tsv(tmp_path):
    import numpy

    gates = torch.tensor([[0.9, 0.2], [0.4, 0.7]], dtype=torch.float64)
    torch.save(gates, tmp_path / "gates.pt")
    numpy.save(tmp_path / "gates.npy", gates.numpy())
    tsv = DuoAttention(pattern=write_pattern(tmp_path / "gates.tsv", gates.tolist()), head_sparsity=0.5)
    for name in ("gates.pt", "gates.npy"):
        method = DuoAttention(pattern=str(tmp_path / name), head_sparsity=0.5)
        assert torch.equal(method.streaming, tsv.streaming)
    assert tsv.streaming.tolist() == [[False, True], [True, False]]


def test_attention_scores_hold_at_most_their_memory_budget_and_give_the_same_scores(monkeypatch):
    """H2O scores every query of a step: in blocks whose fp32 weights stay within SCORE_BLOCK_BYTES, whatever the
    block, the same scores (at 128K held, 256 queries of Llama-8B's 32 query heads would be 4 GiB at once)."""
    import kvbench.method as method_module

    torch.manual_seed(0)
    heads, per_head, held, new = 2, 2, 300, 120
    view = KeepView(
        layer=0,
        group=0,
        heads=[0, 1],
        phase=Phase(False, 1, 3),
        positions=torch.arange(held).expand(heads, -1),
        keys=torch.randn(heads, held, 8),
        values=torch.randn(heads, held, 8),
        queries=torch.randn(heads, per_head, new, 8),
        num_new=new,
        scaling=8**-0.5,
    )
    default = view.attention_scores()
    sizes = []
    einsum = torch.einsum

    def recording(*args):
        out = einsum(*args)
        sizes.append(out.numel() * 4)
        return out

    budget = 4 * heads * per_head * held * 16  # 16 queries' weights
    monkeypatch.setattr(method_module, "SCORE_BLOCK_BYTES", budget)
    monkeypatch.setattr(torch, "einsum", recording)
    bounded = view.attention_scores()
    assert len(sizes) == -(-new // 16) and max(sizes) <= budget
    torch.testing.assert_close(bounded, default, atol=1e-6, rtol=1e-5)
