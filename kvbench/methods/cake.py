"""CAKE (Qin et al., ICLR 2025, arXiv 2503.12491: Cascading and Adaptive KV cache Eviction with Layer Preferences):
the layers' total budget is split over the layers by what each one's attention asks for, and each layer keeps its
share by CAKE's eviction indicator.

Both read A, the attention of the step's last `obs_window` queries (per query head), a softmax over the held entries
from the step's first candidate on, restricted to the entries that compete by score (the candidates less the recent
window: the whole prompt post-fill, a chunk's own entries when chunked under `keep`, everything held under `budget`):
- a layer's preference P = D^(1/tau1) x S^(1/tau2): D, the spatial dispersion, is the entropy -sum A log(A + 1e-10)
  over the layer's query heads, window queries and entries; S, the temporal shift, is A's variance across the window's
  queries (unbiased), summed over query heads and entries;
- the split: every layer's k (the average layer's kept-by-score count, as for every score method: `keep` of the
  step's new entries, or `budget` less the recent window) summed over the layers, then given out in proportion to P,
  each share rounded down and at most what the layer can evict; what a capped layer cannot take, then what the
  rounding left, go evenly to the layers below their cap, one more to each of the first in layer order for the
  remainder (`split_budget`, the reference's `adjust_budgets`). The budgets sum to the total, or to all the layers can
  evict when that is less (nothing is evicted then). No preference at all (every layer's 0: a single window query has
  no variance): an even split;
- the indicator, within a layer: A's mean over the window's queries plus `gamma` x its variance across them, per
  query head, average-pooled with `kernel` over the competing entries (zero-padded at their edges), averaged over
  the KV head's query heads; each KV head keeps its layer's budget of the best, and the recent window.

The split needs every layer's preference, so each layer only scores in `select_layer` and keeps everything for now,
and `finish_step` evicts every layer once the last one has attended (post-fill: after the prompt's last chunk;
chunked and patched: after every chunk). Every layer therefore holds all of the step's entries until the step ends,
and the measured peak shows it (`kv_peak_bytes`, `kv_entries`, the allocator's peak). The reference's cascading mode
(cake_cache.py:227-235, its README's example) instead evicts the layers seen so far as each layer is prefilled,
re-splitting the total over them, so that the cache stays near the budget during prefill. The kept sets here are
those of its non-cascading mode (cake_cache.py:236-244, the default without `--cascading`: every layer evicted once
the last has scored, by the split over all layers), which are the cascade's final ones too unless an earlier
cascade step gave a layer less than the final split does, which it cannot take back (a rounding remainder that lands
elsewhere, or a capped layer's excess spread evenly): then the cascade keeps fewer. In a simulation of the
reference's split over 32 layers with budgets far below the prompt, 0.6% of the draws did.

Chunked (and patched), the split is made again at every chunk from that chunk's preferences, and what a layer
evicts then is gone. A layer whose window queries all sit on the same entries in a chunk (no shift, little
dispersion) is given little more than its recent window for that chunk: on the bundled kvbench-tiny model, layer 1
keeps 16 of the first chunk's 256 entries at keep 0.3 (layer 0: 170), losing the sink and the first demonstrations,
and ICL and re-rank fail at every keep of the table's grid (leaderboards/README.md). Post-fill, the same split over
the whole prompt keeps ICL. That is CAKE's rule applied per chunk, not a guard of kvbench's.

Reads the step's last queries: under `query=agnostic`, the context's last tokens (never the question's). The split
reads the layers' preferences on the host, once per evicting step.

Where kvbench differs from the reference (github.com/qtris123/cakekv, a fork of antgroup/cakekv whose authors'
commits end at c4675ce; at the fork's head `cake/monkeypatch.py` routes Llama through `modify_llama_induction.py`, a
diagonal-based preference of the fork's own, so kvbench follows the authors' `cake/model/modify_llama.py`, which the
fork still runs for Mistral and Qwen2):
- `window_size` there is both the observation window and the always-kept window; here they are the score methods'
  `obs_window` and `recent` (64 and 64 by default, as every score method's; the reference's 32 is
  `obs_window=32,recent=32`), and the statistics skip the recent window's columns (the reference: the observation
  window's, modify_llama.py:105-106, 116). The reference prefills the prompt in one forward and scores with its last
  queries; here post-fill scores with the last chunk's, fewer when that chunk is shorter than `obs_window`;
- a layer holding more than its budget is evicted; the reference leaves a prompt of up to cache_size + window_size
  tokens whole (cake_cache.py:219);
- a share that the even spreading pushes past a layer's cap is spread again; the reference clips it afterwards and
  its total falls short (utils.py:38-42 and 57-62, then cake_cache.py:240-241). With no preference at all it divides
  by zero; here the split is even;
- decoded tokens are kept, as by every score method that does not evict while decoding: the reference evicts one
  entry per decode step to hold each layer at its budget, by the new token's pooled attention alone
  (cake_cache.py:276-323), which would also make lm-eval's scored continuations run token by token;
- the weights stay fp32 (the reference rounds them to the model's dtype before its statistics, modify_llama.py:102);
- `tau1`, `tau2` default to 1.0, the reference's value where its table has none (pred_cake.py:197-203); its tuned
  values are per model and cache size (experiments/LongBench/config/model2tau.json, e.g. Llama-3.1-8B at 1024
  entries: tau1 1.6, tau2 0.4). `kernel` (5) is fixed there (modify_llama.py:117).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from kvbench.method import SCORE_BLOCK_BYTES, KeepView, ModelShape, Phase, ScoreMethod, require
from kvbench.methods.scorer_wrapper import build_scorer, flat_params


@dataclass
class _Scored:
    """What a layer's scoring leaves for the split at the end of the step."""

    pool: range  # held entries competing by score: the candidates less the recent window
    end: int  # entries the layer holds once its select_layer() answer is applied (a scoring tail dropped)
    k: int  # the average layer's kept-by-score count
    preference: torch.Tensor  # 0-d
    indicators: list[torch.Tensor]  # per head group: [heads, len(pool)]


@dataclass
class Cake(ScoreMethod):
    tau1: float = 1.0
    tau2: float = 1.0
    gamma: float = 200.0
    kernel: int = 5
    # The ranking within a layer: CAKE's own indicator, or any score method's scores (its parameters flat beside
    # these, as for adakv and chunkkv); the layer budgets always come from CAKE's preferences.
    scorer: str = "cake"
    scorer_params: dict = field(default_factory=dict)

    extra_params: ClassVar[str] = "scorer_params"

    name = "cake"
    description = (
        "Splits the layers' total budget by each layer's attention dispersion and shift (CAKE); "
        "a layer keeps the entries with the highest window mean + gamma x variance of attention."
    )

    def validate(self) -> None:
        super().validate()
        require(
            self.obs_window >= 2,
            f"obs_window must be an integer >= 2 (the shift is a variance across the window's queries); "
            f"got {self.obs_window!r}",
        )
        for name in ("tau1", "tau2"):
            value = getattr(self, name)
            require(
                isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf,
                f"{name} must be a number > 0; got {value!r}",
            )
        require(
            isinstance(self.gamma, (int, float)) and not isinstance(self.gamma, bool) and 0 <= self.gamma < math.inf,
            f"gamma must be a number >= 0; got {self.gamma!r}",
        )
        require(
            isinstance(self.kernel, int) and self.kernel >= 1 and self.kernel % 2 == 1,
            f"kernel must be an odd integer >= 1; got {self.kernel!r}",
        )
        if self.scorer == "cake":
            require(
                not self.scorer_params,
                f"method 'cake' has no parameter {next(iter(self.scorer_params), '')!r} (with its own indicator; "
                f"give scorer=NAME for another scorer's parameters)",
            )
            self.inner = None
        else:
            self.inner = build_scorer(self, self.scorer, self.scorer_params)
        self.bind(None)  # state, not parameters: not dataclass fields, so never in params()

    def params(self) -> dict:
        return flat_params(self)

    def bind(self, shape: ModelShape | None) -> None:
        self._scored: dict[int, _Scored] = {}
        self._phase: Phase | None = None
        if shape is not None and self.inner is not None:
            self.inner.bind(shape)

    # ---- at each layer: score, keep everything for now ----

    def select(self, view: KeepView) -> torch.Tensor | None:
        return self.select_layer([view])[0]

    def select_layer(self, views) -> list[torch.Tensor | None]:
        views = list(views)
        if not views or not self.evicts_now(views[0]):
            return [None] * len(views)
        first = views[0]
        if self._phase != first.phase:  # a step that ended without finish_step (an error) leaves nothing behind
            self._scored, self._phase = {}, first.phase
        candidates, k = self.competing(first)  # every layer counts in the total, evicting or not
        pool = range(candidates.start, candidates.stop - min(self.recent, len(candidates)))
        indicators = []
        for view in views:
            view.candidates = candidates
            if not len(pool):  # nothing competes by score here (a scorer need not handle an empty pool)
                indicators.append(torch.zeros(len(view.heads), 0, device=view.keys.device))
                continue
            indicators.append(self.checked_scores(view)[:, pool.start : pool.stop])
        # A second pass over the window's weights (the first was score()'s): w x held per head, small beside the
        # step's own attention, and score() stays the one place the indicator is made.
        self._scored[first.layer] = _Scored(pool, candidates.stop, k, self.preference(views, pool), indicators)
        return [None] * len(views)

    # ---- once every layer has attended: split the budget, evict ----

    def finish_step(self, phase: Phase) -> dict[int, list[torch.Tensor | None]]:
        scored, self._scored, self._phase = self._scored, {}, None
        if not scored:
            return {}
        layers = sorted(scored)
        caps = [len(scored[layer].pool) for layer in layers]
        total = sum(scored[layer].k for layer in layers)
        if total >= sum(caps):  # every layer can keep all it holds
            return {}
        device = scored[layers[0]].preference.device  # layers split over GPUs: their preferences meet on one
        preferences = torch.stack([scored[layer].preference.to(device) for layer in layers]).tolist()
        budgets = split_budget(preferences, total, caps)
        return {
            layer: [_kept(scored[layer], indicator, budget) for indicator in scored[layer].indicators]
            for layer, budget, cap in zip(layers, budgets, caps)
            if budget < cap
        }

    # ---- what the window's attention says ----

    def score(self, view: KeepView) -> torch.Tensor:
        if self.inner is not None:  # another score method ranks the entries within a layer
            return self.inner.score(view)
        return self.indicator(view)

    def indicator(self, view: KeepView) -> torch.Tensor:
        """CAKE's eviction indicator, [h, n]: over the competing entries (`view.candidates`, all held if unset, less
        the recent window) the window's mean attention + gamma x its variance across the window's queries, pooled
        with `kernel` and averaged over each KV head's query heads; 0 elsewhere."""
        candidates = view.candidates if view.candidates is not None else range(0, view.num_held - view.num_scoring)
        pool = range(candidates.start, candidates.stop - min(self.recent, len(candidates)))
        scores = torch.zeros(len(view.heads), view.num_held, device=view.keys.device)
        if not len(pool):
            return scores
        for start, weights in self._window_weights(view, pool):  # [hb, r, w, pool]
            indicator = weights.mean(dim=2) + self.gamma * weights.var(dim=2, correction=int(weights.shape[2] > 1))
            if self.kernel > 1:  # keep the neighbours of important entries too, as SnapKV
                indicator = F.avg_pool1d(indicator, self.kernel, stride=1, padding=self.kernel // 2)
            scores[start : start + len(indicator), pool.start : pool.stop] = indicator.mean(dim=1)
        return scores

    def preference(self, views: list[KeepView], pool: range) -> torch.Tensor:
        """The layer's preference, 0-d: dispersion^(1/tau1) x shift^(1/tau2), both summed over the layer's groups."""
        dispersion = shift = torch.zeros((), device=views[0].keys.device)
        for view in views if len(pool) else ():  # nothing competes: no preference
            for _, weights in self._window_weights(view, pool):
                dispersion = dispersion - (weights * torch.log(weights + 1e-10)).sum()
                shift = shift + weights.var(dim=2, correction=int(weights.shape[2] > 1)).sum()
        return dispersion.clamp(min=0) ** (1 / self.tau1) * shift ** (1 / self.tau2)

    def _window_weights(self, view: KeepView, pool: range):
        """(first KV head, weights) by blocks of KV heads: the softmax attention of the step's last `obs_window`
        queries over the held entries from `pool.start` on (each query sees up to itself), per query head, only the
        pool's columns kept: [heads of the block, r, w, len(pool)], fp32. Blocks keep the weights of all the window's
        queries over what is held under SCORE_BLOCK_BYTES, as KeepView.attention_scores."""
        queries = view.queries[:, :, -self.obs_window :]
        heads, per_head, count = queries.shape[:3]
        since, held = pool.start, view.num_held
        keys = view.keys[:, since:]
        rows = torch.arange(held - count, held, device=keys.device)  # the window's queries sit last among the held
        visible = torch.arange(since, held, device=keys.device)[None, :] <= rows[:, None]
        block = max(1, SCORE_BLOCK_BYTES // (4 * per_head * count * max(held - since, 1)))
        for start in range(0, heads, block):
            logits = torch.einsum(
                "hrqd,hnd->hrqn", queries[start : start + block].float(), keys[start : start + block].float()
            )
            weights = (logits * view.scaling).masked_fill(~visible, float("-inf")).softmax(dim=-1)
            yield start, weights[..., : len(pool)]


def split_budget(preferences: list[float], total: int, caps: list[int]) -> list[int]:
    """CAKE's layer budgets: `total` entries over the layers in proportion to their preferences, each at most its cap,
    summing to min(total, sum(caps)). Each share is rounded down; what a capped layer cannot take, then what the
    rounding left, go evenly to the layers below their cap, the first ones in layer order one more each for the
    remainder (the reference's adjust_budgets, utils.py:21; a layer the spreading pushes past its cap is clipped
    there, the part lost: here it is spread again). No preference at all (all 0, or not finite): an even split."""
    weight = sum(preferences)
    if not (math.isfinite(weight) and weight > 0):
        preferences, weight = [1.0] * len(caps), float(len(caps))
    shares = [int(preference / weight * total) for preference in preferences]
    budgets = [min(share, cap) for share, cap in zip(shares, caps)]
    budgets = _spread(budgets, sum(shares) - sum(budgets), caps)
    return _spread(budgets, total - sum(budgets), caps)


def _spread(budgets: list[int], amount: int, caps: list[int]) -> list[int]:
    """`amount` more entries given evenly to the layers below their cap (the first ones one more each for the
    remainder), again over those still below it, until it is placed or every layer is full."""
    budgets = list(budgets)
    while amount > 0:
        open_layers = [i for i, (budget, cap) in enumerate(zip(budgets, caps)) if budget < cap]
        if not open_layers:
            break
        each, remainder = divmod(amount, len(open_layers))
        for rank, i in enumerate(open_layers):
            given = min(caps[i] - budgets[i], each + (rank < remainder))
            budgets[i] += given
            amount -= given
    return budgets


def _kept(scored: _Scored, indicator: torch.Tensor, budget: int) -> torch.Tensor:
    """Held indices a head group keeps, [heads, kept] ascending: everything outside the pool (before the candidates,
    the recent window) and each head's `budget` best by the indicator."""
    device, pool = indicator.device, scored.pool
    chosen = indicator.topk(budget, dim=-1).indices + pool.start
    always = torch.cat([torch.arange(0, pool.start, device=device), torch.arange(pool.stop, scored.end, device=device)])
    return torch.cat([always.expand(indicator.shape[0], -1), chosen], dim=-1).sort(dim=-1).values
