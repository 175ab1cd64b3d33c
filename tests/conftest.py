"""Tiny random models built from configs inside the tests (no download, fp32, seeded), and the bundled kvbench-tiny."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

# One thread per test process: the suite's models are tiny, and a second thread mostly waits (or spins against
# the other test process under pytest-xdist, which runs one process per core: `bash scripts/dev.sh test`).
torch.set_num_threads(1)

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A 2-layer GQA model (4 query heads over 2 KV heads) with random weights, in eval mode."""
    config_class, model_class = FAMILIES[family]
    settings = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        attn_implementation="sdpa",
    )
    if family == "mistral":
        settings["sliding_window"] = None
    settings.update(overrides)
    torch.manual_seed(seed)
    return model_class(config_class(**settings)).eval()


@pytest.fixture(scope="session")
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def bundled_tiny():
    """The bundled kvbench-tiny model and its tokenizer, loaded with the hub offline: nothing may be downloaded.
    Shared by the whole session; tests that patch it (kvbench_attention) restore it on exit."""
    from kvbench import tiny

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return tiny.load()


def random_prompt(length: int, seed: int = 0, vocab: int = 256) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (length,), generator=generator)
