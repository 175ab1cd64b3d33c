"""kvbench-tiny: a 2-layer Llama checkpoint bundled with the package, built by `python -m kvbench.tiny.build`.

Its weights are set by construction to look facts up in its context (see build.py and MODEL_CARD.md), so
its answers depend on what the KV cache keeps. Load it offline as `pretrained=kvbench-tiny`.
"""

from __future__ import annotations

from pathlib import Path

NAME = "kvbench-tiny"
MODEL_DIR = Path(__file__).resolve().parent / "model"
CONTEXT_LENGTH = 16384  # what its positional heads were designed for (build.MAX_CONTEXT)
PATTERN_DIR = Path(__file__).resolve().parent / "patterns"
# Head patterns trained for it (`kvbench prulong train` / `kvbench duo train`, see patterns/README.md), used
# as `method=prulong,pattern=kvbench-tiny` with the sink and window they were trained with.
PATTERNS = {
    "prulong": PATTERN_DIR / "prulong" / "scores.tsv",
    "duoattention": PATTERN_DIR / "duoattention" / "gates.tsv",
}
PATTERN_SINK, PATTERN_WINDOW = 4, 64  # layer 0 of kvbench-tiny looks back at most 36 tokens


def resolve_pattern(method: str, pattern: str) -> str:
    """The bundled pattern file of `method` for pattern="kvbench-tiny"; any other value is returned unchanged."""
    if pattern != NAME:
        return pattern
    if method not in PATTERNS:
        raise ValueError(f"{NAME} ships head patterns for {', '.join(sorted(PATTERNS))}, not for {method}")
    return str(PATTERNS[method])


def resolve_pretrained(name: str) -> str:
    """The bundled checkpoint's directory for "kvbench-tiny"; a local folder or a hub name as given. A path that is
    not there, or a misspelt "kvbench-tiny", is a one-line error saying so (a misspelt
    name would otherwise be tried on the Hub, retrying for a minute on an offline machine). A hub name has at most
    one slash (org/model), so anything else is taken for a path."""
    import difflib
    import os

    if name == NAME:
        if not (MODEL_DIR / "model.safetensors").exists():
            raise FileNotFoundError(
                f"the bundled {NAME} checkpoint is missing from {MODEL_DIR}; "
                "rebuild it with `python -m kvbench.tiny.build`"
            )
        return str(MODEL_DIR)
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "") or path.exists():
        raise FileNotFoundError(
            f"pretrained={name}: no such folder; point pretrained= at a checkpoint folder, "
            f"or use {NAME} (the bundled model) or a Hugging Face hub name (org/model)"
        )
    if difflib.get_close_matches(name, [NAME], cutoff=0.8):
        raise FileNotFoundError(f"pretrained={name}: no such model; did you mean {NAME} (the bundled model)?")
    return name


def load(dtype=None):
    """(model, tokenizer) of kvbench-tiny, in float32 unless told otherwise (its attention logits are large)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_pretrained(NAME)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path)
