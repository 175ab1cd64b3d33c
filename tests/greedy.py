"""Comparing two greedy decodes of one prompt made by different computations (chunked vs whole prefill, kvbench vs
transformers, query-aware vs query-agnostic), robustly across CPUs.

Two different computations agree only up to rounding (which differs between CPUs, kernels and thread counts), so
their greedy tokens agree only where the reference's top-1 logit beats its top-2 by more than the rounding. A test
that demands equal tokens regardless holds or fails by chance at a near-tie, and once one token flips, every later
logit differs by construction. `assert_same_greedy` therefore compares each step's logits within a tolerance, and
the tokens wherever the reference's margin is decisive; at a near-tie that the two decided differently it stops
(what follows was computed from different tokens). The first step always has the same input, so it is always
compared: the check is never vacuous.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def top2_margin(logits: torch.Tensor) -> float:
    """Top-1 minus top-2 of one step's logits (1-D)."""
    top = logits.float().topk(2).values
    return float(top[0] - top[1])


def tie_bound(logits: torch.Tensor, atol: float, rtol: float) -> float:
    """Below this top-1/top-2 margin, logits within (atol, rtol) of `logits` may have another argmax."""
    return 2 * (atol + rtol * float(logits.float().abs().max()))


def assert_same_greedy(
    got_tokens: Sequence[int],
    got_logits: Sequence[torch.Tensor],
    want_tokens: Sequence[int],
    want_logits: Sequence[torch.Tensor],
    *,
    atol: float,
    rtol: float,
) -> int:
    """Step by step: the logits within (atol, rtol) of the reference's, and the same token wherever the reference's
    top-1/top-2 margin exceeds what that tolerance could flip. Stops after a near-tie that the two computations
    decided differently. Returns the number of steps compared (at least 1)."""
    assert len(got_logits) == len(got_tokens) and len(want_logits) == len(want_tokens)
    compared = 0
    for step, (got_token, got, want_token, want) in enumerate(zip(got_tokens, got_logits, want_tokens, want_logits)):
        torch.testing.assert_close(
            got.float(), want.float(), atol=atol, rtol=rtol, msg=lambda m, step=step: f"step {step}: {m}"
        )
        compared += 1
        margin, bound = top2_margin(want), tie_bound(want, atol, rtol)
        if margin > bound:
            assert got_token == want_token == int(want.argmax()), (
                f"step {step}: token {got_token} != {want_token} at a decisive margin {margin:.2e} > {bound:.2e}"
            )
        elif got_token != want_token:
            break  # a near-tie decided either way: later steps are fed different tokens
    else:  # every step compared: the decodes also end together
        assert len(got_tokens) == len(want_tokens), f"{len(got_tokens)} tokens != {len(want_tokens)}"
    assert compared >= 1, "nothing was compared"
    return compared
