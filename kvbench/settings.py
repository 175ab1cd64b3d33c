"""The defaults and checks that several parts of kvbench share, each in one place.

A method's own parameters and their defaults live in its dataclass (kvbench/methods/); everything else a user can
set in more than one way (the `kvbench` command, a sweep config, `--model_args`, the Python API) is here, and the
CLI, the sweep and the backend read it from here (tests/test_settings.py checks that they do).
"""

from __future__ import annotations

DEFAULT_CHUNK_SIZE = 32768  # prefill chunk, the paper's
DEFAULT_CONTEXT_LENGTH = 131072  # tokens: the paper reports 128K
DEFAULT_THRESHOLD = 0.9  # share of full attention's score the critical footprint keeps
# Streaming heads and windows (StreamingLLM, DuoAttention/PruLong's streaming heads, their training, the formula).
DEFAULT_SINK, DEFAULT_WINDOW = 128, 1024
DEFAULT_RECENT = 64  # a score method's always-kept recent entries per chunk, as the paper counts them
DEFAULT_KEEP = 0.5  # a score method's kept share, when neither keep nor budget is given
DEFAULT_HEAD_SPARSITY = 0.5  # DuoAttention/PruLong: the share of streaming heads
QUERY_MODES = ("aware", "agnostic")  # the question prefilled with its context, or run after the context's eviction
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Sweeps: a cell that raises is tried again this often, then reported failed; a claim not refreshed for this many
# seconds belongs to a stopped worker (kvbench/claims.py).
DEFAULT_RETRIES = 1
DEFAULT_CLAIM_EXPIRY = 600.0

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no", "none")


def check_query(query: str) -> str:
    if query not in QUERY_MODES:
        raise ValueError(
            f"query must be aware (the question is prefilled with its context) or agnostic (the context is "
            f"prefilled and evicted before the question is known); got {query!r}"
        )
    return query


def check_threshold(threshold: float) -> float:
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    return threshold


def parse_bool(value, name: str) -> bool:
    """true/false from a command line's text (true, 1, yes / false, 0, no, none), or a bool as given."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in TRUE:
        return True
    if str(value).lower() in FALSE:
        return False
    raise ValueError(f"{name} must be true or false; got {value!r}")


def parse_dtype(dtype):
    """`auto`, a torch dtype, or its name (float32, bfloat16, float16)."""
    import torch

    if dtype in (None, "auto") or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    value = getattr(torch, str(dtype), None) if str(dtype) in DTYPES else None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return value
