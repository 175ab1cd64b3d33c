"""`random`: a uniformly random, seeded choice of the entries kept by score; the floor of every leaderboard."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import binomtest, chisquare

import kvbench
from kvbench.method import KeepView, Phase
from kvbench.methods.random_eviction import RandomEviction
from kvbench.methods.snapkv import SnapKV


def chunk_view(layer=1, chunk=1, held=200, new=100, heads=2):
    return KeepView(
        layer=layer,
        group=0,
        heads=list(range(heads)),
        phase=Phase(False, chunk, 3),
        positions=torch.arange(held).expand(heads, -1),
        keys=torch.zeros(heads, held, 8),
        values=torch.zeros(heads, held, 8),
        queries=torch.zeros(heads, 2, new, 8),
        num_new=new,
        scaling=8**-0.5,
    )


def kept(method, view):
    method.bind(kvbench.ModelShape(4, 4, 2, 8))
    return method.select(view)


def test_the_same_seed_keeps_the_same_entries_and_another_seed_others():
    view = chunk_view()
    first = kept(RandomEviction(keep=0.2, recent=4), view)
    assert torch.equal(first, kept(RandomEviction(keep=0.2, recent=4), view))
    assert not torch.equal(first, kept(RandomEviction(keep=0.2, recent=4, seed=1), view))
    assert not torch.equal(first, kept(RandomEviction(keep=0.2, recent=4), chunk_view(layer=2)))  # per layer
    assert not torch.equal(first[0], first[1])  # per head


def test_every_candidate_is_equally_likely_to_be_kept():
    # The chunk's 100 new entries compete (the 100 held before are kept: chunked schedule), 4 recent are kept
    # always, and round(0.2 x 100) = 20 of the other 96 by score: each candidate with probability 20/96.
    counts = torch.zeros(96)
    draws = 300
    for seed in range(draws):
        index = kept(RandomEviction(keep=0.2, recent=4, seed=seed), chunk_view())
        assert index.shape == (2, 100 + 20 + 4)
        assert torch.equal(index[:, :100], torch.arange(100).expand(2, -1))  # earlier chunks untouched
        assert torch.equal(index[:, -4:], torch.arange(196, 200).expand(2, -1))  # the recent window
        for head in index:
            counts += torch.bincount(head[100:-4] - 100, minlength=96)[:96].float()
    assert counts.sum() == draws * 2 * 20
    assert chisquare(counts.numpy()).pvalue > 0.001  # uniform (a fixed seed set: this is not a flaky test)


def test_bad_seed_is_refused_naming_the_range():
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\^31\); got -1"):
        kvbench.load_method("random", seed=-1)


@pytest.mark.slow
def test_random_loses_the_needle_that_snapkv_keeps_at_the_same_footprint(bundled_tiny):
    """On the bundled model's recall task at keep 0.1 (footprint ~37%), per prompt: the needle survives SnapKV's
    choice and not a random one. Paired sign test over 16 prompts."""
    from kvbench.tiny import evaluate

    model, tokenizer = bundled_tiny
    prompts = evaluate.samples("synth_recall", tokenizer, length=1024, num_samples=16)
    results = {
        name: evaluate.evaluate(model, tokenizer, "synth_recall", make, prompts=prompts)
        for name, make in {
            "random": lambda: RandomEviction(keep=0.1, recent=16),
            "snapkv": lambda: SnapKV(keep=0.1, recent=16, obs_window=16, schedule="patched"),
        }.items()
    }
    random_, snapkv = results["random"], results["snapkv"]
    assert abs(random_.kv_footprint - snapkv.kv_footprint) < 0.01  # the same counts kept: only the choice differs
    snapkv_only = sum(s > r for s, r in zip(snapkv.scores, random_.scores))
    random_only = sum(r > s for s, r in zip(snapkv.scores, random_.scores))
    assert binomtest(snapkv_only, snapkv_only + random_only, alternative="greater").pvalue < 0.01
