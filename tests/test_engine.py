"""The engine against plain transformers: same logits and tokens, true positions, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import random_prompt, tiny_model
from greedy import assert_same_greedy, top2_margin
from transformers import BloomConfig, BloomForCausalLM

from kvbench import generate
from kvbench.methods.full import Full
from kvbench.methods.streamingllm import StreamingLLM

PROMPT_LEN = 100
NEW_TOKENS = 6


def hf_greedy(model, prompt, new_tokens):
    out = model.generate(
        prompt[None],
        max_new_tokens=new_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out.sequences[0, len(prompt) :].tolist(), [logits[0] for logits in out.logits]


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_full_matches_plain_transformers(family, chunk_size):
    model = tiny_model(family, head_dim=16)
    prompt = random_prompt(PROMPT_LEN, seed=1)
    want_tokens, want_logits = hf_greedy(model, prompt, NEW_TOKENS)

    got = generate(model, prompt, Full(), chunk_size=chunk_size, max_new_tokens=NEW_TOKENS, return_logits=True)

    assert_same_greedy(got.token_ids, got.logits, want_tokens, want_logits, atol=2e-5, rtol=1e-5)
    assert got.stats.kv_footprint == 1.0
    assert got.stats.kv_peak == 1.0


@pytest.mark.parametrize("chunk_size", [5, 64])
def test_mistral_sliding_window_matches_plain_transformers(chunk_size):
    model = tiny_model("mistral", head_dim=16, sliding_window=24)
    prompt = random_prompt(PROMPT_LEN, seed=2)
    want_tokens, want_logits = hf_greedy(model, prompt, NEW_TOKENS)
    got = generate(model, prompt, chunk_size=chunk_size, max_new_tokens=NEW_TOKENS, return_logits=True)
    assert_same_greedy(got.token_ids, got.logits, want_tokens, want_logits, atol=2e-5, rtol=1e-5)


def test_model_is_left_as_it_was(llama):
    before = llama.config._attn_implementation
    generate(llama, random_prompt(20), max_new_tokens=2)
    assert llama.config._attn_implementation == before
    llama(random_prompt(20)[None])  # still usable without kvbench


def streaming_reference_mask(step_starts, total, sink, window):
    """What each query sees under StreamingLLM when steps start at `step_starts` (true positions)."""
    mask = torch.zeros(total, total, dtype=torch.bool)
    bounds = list(step_starts) + [total]
    for start, end in zip(bounds[:-1], bounds[1:]):
        for query in range(start, end):
            keys = torch.arange(query + 1)
            mask[query, : query + 1] = (keys < sink) | (keys >= start - window)
    return mask


def masked_logits(model, ids, mask, position_ids=None):
    bias = torch.zeros(mask.shape, dtype=torch.float32).masked_fill(~mask, torch.finfo(torch.float32).min)
    with torch.no_grad():
        return model(ids[None], attention_mask=bias[None, None], position_ids=position_ids).logits[0]


@pytest.mark.parametrize("chunk_size", [1, 16])
def test_decoding_after_eviction_uses_true_positions(llama, chunk_size):
    sink, window, new_tokens = 4, 8, 5
    prompt = random_prompt(80, seed=3)
    got = generate(
        llama,
        prompt,
        StreamingLLM(sink=sink, window=window),
        chunk_size=chunk_size,
        max_new_tokens=new_tokens,
        return_logits=True,
        eos_token_id=[],
    )
    ids = torch.cat([prompt, torch.tensor(got.token_ids[:-1])])
    starts = list(range(0, len(prompt), chunk_size)) + list(range(len(prompt), len(ids)))
    mask = streaming_reference_mask(starts, len(ids), sink, window)
    want = masked_logits(llama, ids, mask)[len(prompt) - 1 :]
    torch.testing.assert_close(torch.stack(got.logits), want, atol=2e-5, rtol=1e-5)

    # The check is sensitive to positions: numbering tokens by entries held gives other logits.
    held_count_positions = torch.clamp(torch.arange(len(ids)), max=sink + window)[None]
    wrong = masked_logits(llama, ids, mask, position_ids=held_count_positions)[len(prompt) - 1 :]
    assert not torch.allclose(wrong, want, atol=2e-5, rtol=1e-5)


def test_generation_stops_at_stop_string_and_eos():
    class CharTokenizer:  # one character per token id, enough to exercise stop strings
        eos_token_id = None

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(65 + i % 26) for i in ids)

    model = tiny_model("llama")
    prompt = random_prompt(30, seed=4)
    free = generate(model, prompt, max_new_tokens=8, eos_token_id=[])
    text = CharTokenizer().decode(free.token_ids)
    stop = text[3:5]
    stopped = generate(model, prompt, max_new_tokens=8, stop=[stop], tokenizer=CharTokenizer(), eos_token_id=[])
    assert stopped.finish_reason == "stop"
    assert stopped.text == text[: text.find(stop)]
    eos = generate(model, prompt, max_new_tokens=8, eos_token_id=free.token_ids[2])
    assert eos.finish_reason == "eos"
    assert eos.token_ids == free.token_ids[: free.token_ids.index(free.token_ids[2]) + 1]


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5])
def test_bad_chunk_size(llama, chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        generate(llama, random_prompt(10), chunk_size=chunk_size)


def test_empty_prompt(llama):
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(llama, [], max_new_tokens=1)


def test_prompt_longer_than_model_positions():
    model = tiny_model("llama", max_position_embeddings=64)
    with pytest.raises(ValueError, match=r"needs 73 positions; the model supports at most 64"):
        generate(model, random_prompt(70), max_new_tokens=4)


def test_batch_of_several_sequences_is_refused(llama):
    with pytest.raises(ValueError, match="one sequence at a time"):
        generate(llama, torch.zeros(2, 8, dtype=torch.long))


def test_model_without_attention_interface_is_refused():
    model = BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=32, n_layer=1, n_head=2)).eval()
    with pytest.raises(ValueError, match="does not route attention through transformers' AttentionInterface"):
        generate(model, random_prompt(10, vocab=64), max_new_tokens=1)


def test_attention_arguments_kvbench_does_not_implement_are_refused():
    """GPT-OSS hands its attention learned sinks (`s_aux`); attending without them would silently change the
    logits, so the model is refused by name."""
    from transformers import GptOssConfig, GptOssForCausalLM

    config = GptOssConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        head_dim=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=2,
        num_experts_per_tok=1,
        max_position_embeddings=256,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = GptOssForCausalLM(config).eval()
    with pytest.raises(
        ValueError,
        match=r"model type 'gpt_oss' passes attention argument\(s\) s_aux that kvbench's "
        "attention does not implement",
    ):
        generate(model, random_prompt(10, vocab=64), max_new_tokens=1)


@pytest.mark.parametrize(
    "params, message",
    [({"sink": -1}, "sink must be an integer >= 0; got -1"), ({"window": 0}, "window must be an integer >= 1; got 0")],
)
def test_streamingllm_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        StreamingLLM(**params)


DECISIVE = 1e-3  # a log-prob margin 100x the 1e-5 the two computations are held to


@pytest.mark.parametrize("chunk_size", [1, 9, 1000])
def test_continuation_scores_match_plain_transformers(llama, chunk_size):
    from kvbench.engine import score_continuation

    context, continuation = random_prompt(40, seed=5), random_prompt(6, seed=6)
    ids = torch.cat([context, continuation])
    with torch.no_grad():
        logprobs = llama(ids[None]).logits[0, 39:-1].log_softmax(-1)
    want = logprobs.gather(1, continuation[:, None])[:, 0]
    got = score_continuation(llama, context, continuation, chunk_size=chunk_size)
    torch.testing.assert_close(torch.tensor(got.token_logprobs), want, atol=1e-5, rtol=1e-5)
    # is_greedy is an argmax: the two computations agree on it only where no position is a near-tie, i.e. where
    # each continuation token's log-prob is decisively above or below the best other token's.
    others = logprobs.scatter(1, continuation[:, None], float("-inf")).max(-1).values
    assert ((want - others).abs() > DECISIVE).all(), "a near-tie in the fixed prompt: is_greedy could go either way"
    assert got.is_greedy == bool((logprobs.argmax(-1) == continuation).all())
    assert got.stats.kv_footprint == 1.0 and got.stats.tokens == 45
    greedy = logprobs.argmax(-1)
    assert top2_margin(logprobs[0]) > DECISIVE, "the first argmax is a near-tie: it could go either way"
    assert score_continuation(llama, context, greedy[:1], chunk_size=chunk_size).is_greedy
