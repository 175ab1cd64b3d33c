"""`chunkkv`: whole chunks of consecutive entries kept or dropped, ranked by a scorer summed over the layer's heads."""

from __future__ import annotations

import pytest
import torch

import kvbench
from kvbench.method import KeepView, Phase


def decide(scores: list[list[float]], **params) -> list[list[int]] | None:
    heads, held = len(scores), len(scores[0])
    view = KeepView(
        layer=0,
        group=0,
        heads=list(range(heads)),
        phase=Phase(False, 0, 1),
        positions=torch.arange(held).expand(heads, -1),
        keys=torch.randn(heads, held, 4),
        values=torch.randn(heads, held, 4),
        queries=torch.randn(heads, 2, 3, 4),
        num_new=held,
        scaling=0.5,
    )
    method = kvbench.load_method("chunkkv", schedule="postfill", **params)
    method.inner.score = lambda view: torch.tensor(scores)
    index = method.select(view)
    return None if index is None else index.tolist()


HEAD_0 = [1.0, 1.0, 0.0, 0.0, 5.0, 5.0, 0.0, 0.0]
HEAD_1 = [0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 1.0, 1.0]
# summed over the heads: [1, 1, 0, 3, 5, 5, 1, 1]; chunks of 2 score 1, 1.5, 5, 1


def test_the_best_chunks_by_the_heads_summed_score_are_kept_whole_by_every_head():
    # budget 4 = two chunks: 4-5 (5) and 2-3 (1.5); entry 2 (score 0) rides along with entry 3 (3)
    assert decide([HEAD_0, HEAD_1], chunk_length=2, budget=4, recent=0) == [[2, 3, 4, 5], [2, 3, 4, 5]]


def test_chunks_reaching_into_the_recent_window_are_kept_and_count_in_the_budget():
    # recent 2: chunk 6-7 is the window; one more chunk fits the budget of 4: the best, 4-5
    assert decide([HEAD_0, HEAD_1], chunk_length=2, budget=4, recent=2) == [[4, 5, 6, 7]] * 2
    # recent 3 reaches into chunk 4-5 too: both kept, nothing else fits
    assert decide([HEAD_0, HEAD_1], chunk_length=2, budget=5, recent=3) == [[4, 5, 6, 7]] * 2


def test_a_partial_last_chunk_is_scored_by_its_own_mean():
    # 7 entries in chunks of 3: [0-2] mean 1, [3-5] mean 2, [6] mean 4; budget 4 by score: [6] (1 entry) then
    # [3-5] (3 entries) fit, [0-2] does not
    scores = [[1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 4.0]]
    assert decide(scores, chunk_length=3, budget=4, recent=0) == [[3, 4, 5, 6]]


def test_at_least_one_chunk_is_kept_when_the_budget_is_smaller_than_a_chunk():
    assert decide([HEAD_0], chunk_length=4, budget=2, recent=0) == [[4, 5, 6, 7]]


def test_nothing_is_evicted_when_the_budget_holds_everything():
    assert decide([HEAD_0, HEAD_1], chunk_length=2, budget=8, recent=0) is None


@pytest.mark.parametrize(
    "params, message",
    [({"chunk_length": 0}, "chunk_length must be an integer >= 1"), ({"scorer": "h2o"}, "scorer must be")],
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        kvbench.load_method("chunkkv", **params)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["postfill", "chunked", "patched"])
def test_conforms(schedule):
    from kvbench.testing import assert_conforms

    assert_conforms("chunkkv", {"schedule": schedule})
