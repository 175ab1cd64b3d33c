"""The method contract: what a KV eviction method implements.

A method only *decides*. The framework (cache, attention, ledger) stores the KVs, runs attention,
gathers the entries a method keeps and accounts for them, so a method cannot report a footprint
it did not have. See DESIGN.md, "The method contract".
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from kvbench.quant import KV_BITS
from kvbench.settings import DEFAULT_KEEP, DEFAULT_RECENT

SCORE_BLOCK_BYTES = 256 * 2**20  # the most fp32 attention weights KeepView.attention_scores holds at once


@dataclass(frozen=True)
class ModelShape:
    """The facts about a model that a method may check itself against in `bind`."""

    num_layers: int
    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int | None = None
    # RoPE's inverse frequencies, one per rotated pair of dimensions (rotate-half layout: dimension i turns with
    # i + len/2, and dimensions past 2 x len are not rotated); None where the model has no single fixed set (no
    # RoPE, one per layer type, or frequencies that change with the sequence length). A method that must undo or
    # predict the rotation (expected_attention) reads them here.
    rope_inv_freq: tuple[float, ...] | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_config(cls, config) -> ModelShape:
        heads = config.num_attention_heads
        return cls(
            num_layers=config.num_hidden_layers,
            num_query_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            max_positions=getattr(config, "max_position_embeddings", None),
            rope_inv_freq=cls.rope_frequencies(config),
        )

    @staticmethod
    def rope_frequencies(config) -> tuple[float, ...] | None:
        """The inverse frequencies transformers' rotary embedding computes for `config` (its own initialisation for
        scaled variants: linear, llama3, yarn, ...), or None where there is no single fixed set."""
        parameters = getattr(config, "rope_parameters", None)
        if not isinstance(parameters, dict) or "rope_theta" not in parameters:  # no RoPE, or one per layer type
            return None
        rope_type = parameters.get("rope_type", "default")
        if "dynamic" in rope_type or rope_type == "longrope":  # recomputed from the sequence length as it runs
            return None
        if rope_type == "default":  # each model's own default, the same arithmetic in all of them
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            dim = int(head_dim * parameters.get("partial_rotary_factor", 1.0))
            exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
            return tuple((1.0 / (parameters["rope_theta"] ** exponents)).tolist())
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        if rope_type not in ROPE_INIT_FUNCTIONS:
            return None
        inv_freq, _ = ROPE_INIT_FUNCTIONS[rope_type](config)
        return tuple(inv_freq.float().tolist())


@dataclass(frozen=True)
class Phase:
    """Where in a request a forward step is: a prefill chunk, or a decode step."""

    is_decode: bool
    chunk_index: int = 0  # prefill: this chunk's index; decode: the decode step's index; extra: its index
    num_chunks: int = 1  # prefill chunks of the prompt; extra: the method's extra steps
    # A method's own forward step after the prompt (extra_inputs: KVzip's reconstruction of the context); its tokens
    # are not the request's: held while it runs (peaks and bytes count them), in no footprint, counted as extra_tokens.
    is_extra: bool = False

    @property
    def is_last_chunk(self) -> bool:
        return not self.is_decode and not self.is_extra and self.chunk_index == self.num_chunks - 1


@dataclass
class KeepView:
    """What a method sees of one head group after attention at one step.

    Shapes use h = KV heads of the group, n = entries held (the step's new ones included, last),
    c = the step's new tokens, r = query heads per KV head, d = head dimension.
    """

    layer: int
    group: int
    heads: list[int]  # the model's KV head indices held by this group
    phase: Phase
    positions: torch.Tensor  # [h, n] original token positions of the held entries, ascending
    keys: torch.Tensor  # [h, n, d] post-RoPE keys
    values: torch.Tensor  # [h, n, d]
    queries: torch.Tensor  # [h, r, c, d] the step's post-RoPE queries, grouped by KV head
    num_new: int  # c: the step's new entries (the last c held, before any scoring tail)
    scaling: float
    # Patched schedule: the prompt's last tokens appended to this chunk only to score; they are the
    # last `num_scoring` held entries (and the last queries), and the cache drops them after select().
    num_scoring: int = 0
    # ScoreMethod: the held entries competing at this step (set by its select() before score()).
    candidates: range | None = None

    @property
    def num_held(self) -> int:
        return self.positions.shape[-1]

    def keep_ranges(self, *ranges: range) -> torch.Tensor:
        """The same held indices (union of ranges, ascending) for every head of the group: [h, k]. The union is
        taken on the host (no device round trip), then made on the device in one piece per disjoint range."""
        merged: list[list[int]] = []
        for r in sorted((r for r in ranges if len(r)), key=lambda r: r.start):
            if merged and r.start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], r.stop)
            else:
                merged.append([r.start, r.stop])
        index = torch.cat(
            [torch.arange(start, stop, device=self.positions.device) for start, stop in merged]
            or [torch.zeros(0, dtype=torch.long, device=self.positions.device)]
        )
        return index.expand(len(self.heads), -1)

    def attention_scores(self, last: int | None = None, block: int | None = None, since: int = 0) -> torch.Tensor:
        """Attention weights of the step's last `last` queries over the held entries, pooled per KV head.

        Softmax over what each query could see from held index `since` on (the held past entries, and the
        step's own up to itself), averaged over the query heads of each KV head and over the queries: [h, n],
        0 before `since`. Pooling over the GQA group gives one kept set per KV head, never a copy per query
        head. Queries are taken in blocks so that scoring a long chunk never materialises chunk x held
        weights at once: by default 256, or fewer where their fp32 weights would pass SCORE_BLOCK_BYTES (256 of an
        H2O step's queries over 128K held entries of Llama-8B's 32 query heads would be 4 GiB).
        """
        queries = self.queries if last is None else self.queries[:, :, -last:]
        count, held = queries.shape[2], self.num_held
        if block is None:
            per_query = 4 * queries.shape[0] * queries.shape[1] * max(held - since, 1)
            block = max(1, min(256, SCORE_BLOCK_BYTES // per_query))
        keys = self.keys[:, since:].float()
        total = torch.zeros(keys.shape[0], held - since, device=keys.device)
        for start in range(0, count, block):
            part = queries[:, :, start : start + block].float()
            logits = torch.einsum("hrqd,hnd->hrqn", part, keys) * self.scaling
            # Query i (of the last `count`) sits at held index held - count + i and sees entries up to it.
            rows = torch.arange(held - count + start, held - count + start + part.shape[2], device=keys.device)
            visible = torch.arange(since, held, device=keys.device)[None, :] <= rows[:, None]
            total += logits.masked_fill(~visible, float("-inf")).softmax(dim=-1).sum(dim=(1, 2))
        return F.pad(total / (count * queries.shape[1]), (since, 0))

    def top_k(self, scores: torch.Tensor, k: int, candidates: range, recent: int = 0) -> torch.Tensor:
        """Held indices each head keeps: every entry outside `candidates`, the last `recent` entries of
        `candidates`, and the `k` best-scored of the rest; [h, kept] ascending."""
        start, stop = candidates.start, candidates.stop
        recent_start = max(start, stop - recent)
        pool = scores[:, start:recent_start]
        k = max(0, min(k, pool.shape[-1]))
        chosen = pool.topk(k, dim=-1).indices + start
        heads = len(self.heads)
        device = scores.device
        always = torch.cat(
            [torch.arange(0, start, device=device), torch.arange(recent_start, self.num_held, device=device)]
        )
        index = torch.cat([always.expand(heads, -1), chosen], dim=-1)
        return index.sort(dim=-1).values


@dataclass
class Method:
    """Base class of every KV eviction method.

    Subclasses are dataclasses whose fields are the user parameters, with defaults. They set:
    - `name` (unique) and `category` (full, recency, score, quantization, ...), `description`;
    - `knob`: the one parameter a sweep varies to trade memory for quality, `knob_increases` (True
      when a larger knob keeps more entries) and `knob_values` (a default sweep grid);
    - `keeps_everything`: parameters under which the method keeps every entry (the conformance kit
      checks that they reproduce full attention).
    """

    name: ClassVar[str] = ""
    category: ClassVar[str] = ""
    description: ClassVar[str] = ""
    knob: ClassVar[str | None] = None
    knob_increases: ClassVar[bool] = True
    knob_values: ClassVar[tuple] = ()
    keeps_everything: ClassVar[dict] = {}
    # Parameters the conformance kit (`kvbench check`) uses unless told others: its prompts are 96 and 512 tokens, so a
    # method whose defaults act only on longer ones (SimLayerKV's 1024-entry recent window) names settings that act.
    check_params: ClassVar[dict] = {}
    # The values its `schedule` parameter takes (when it evicts during prefill); () for a method with no such choice.
    schedules: ClassVar[tuple[str, ...]] = ()

    # Shared by every method: KV storage at the model's dtype (16), 8 or 4 bits; the footprint
    # counts bytes, so quantization and eviction combine on one axis.
    kv_bits: int = 16

    def __post_init__(self) -> None:
        require(self.kv_bits in KV_BITS, f"kv_bits must be one of {', '.join(map(str, KV_BITS))}; got {self.kv_bits!r}")
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming a bad parameter and its valid range."""

    def bind(self, shape: ModelShape) -> None:
        """Check the method against the model once, before a request (e.g. a head pattern's shape)."""

    def head_groups(self, layer: int, shape: ModelShape) -> list[list[int]]:
        """Split the layer's KV heads into groups stored separately (default: one group)."""
        return [list(range(shape.num_kv_heads))]

    def select(self, view: KeepView) -> torch.Tensor | None:
        """After attention at a step: the held entries each head keeps, [h, k] ascending; None keeps all."""
        return None

    def select_layer(self, views: list[KeepView]) -> list[torch.Tensor | None]:
        """After attention at a step: what each head group of one layer keeps, one select() answer per view (in the
        layer's group order). The default asks select() group by group; a method whose budget is shared by the
        layer's heads (Ada-KV's per-head budgets, with one group per KV head) decides for all of them at once here."""
        return [self.select(view) for view in views]

    def select_key_channels(self, view: KeepView) -> torch.Tensor | None:
        """After select() at a step: the key channels each head of the group keeps from now on, [h, k] ascending
        (ThinK), or None. Once per group: the other channels of its held and future keys are freed. Entries
        then take fewer bytes, which the footprint counts."""
        return None

    def finish_step(self, phase: Phase) -> dict[int, list[torch.Tensor | None]]:
        """Once every layer has attended at a step: decisions made across layers (budgets shared by the layers, as
        CAKE's), {layer: one answer per head group, as select_layer gives}, the indices counting what each group
        holds after its select_layer() decision. {} (the default) decides nothing here. The layers decided here hold
        all their entries until the step ends, which the measured peak counts."""
        return {}

    def extra_inputs(self, prompt_ids: torch.Tensor, tokenizer=None) -> list[torch.Tensor]:
        """Token sequences the engine runs through the model once the prompt (a query-agnostic context) is prefilled,
        each as one forward step (`Phase.is_extra`) at the positions following the prompt: a method's own forward
        passes, such as KVzip's reconstruction of the context. `tokenizer` is the request's, or None when the prompt
        came as token ids. [] (the default) runs none."""
        return []

    def scoring_tokens(self) -> int:
        """How many of the prompt's last tokens to append to every non-last prefill chunk, to score
        with and then drop (the patched schedule); 0 for none."""
        return 0

    def evicts_while_decoding(self) -> bool:
        """Whether select() may evict at a decode step. A scored continuation (lm-eval's log-likelihood) is fed
        token by token when it may, else in one forward, which gives the same logits and footprint. Say False
        only when it holds: the engine checks, and refuses a method that evicts after saying it never does."""
        return True

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def require(condition: bool, message: str) -> None:
    """Parameter validation that reads as the rule it enforces."""
    if not condition:
        raise ValueError(message)


SCHEDULES = ("postfill", "chunked", "patched")


@dataclass
class ScoreMethod(Method):
    """The score-then-top-k family (SnapKV, PyramidKV, L2-norm, H2O, ...): implement `score(view)`.

    Budget: `keep`, the share of each chunk's new entries kept by score (post-fill: of the prompt's),
    on top of the always-kept `recent` window, as the paper counts it; or `budget`, the most entries
    a head holds after an eviction (recent window included), all held entries competing.
    Schedule: `postfill` evicts once, after the whole prompt; `chunked` after every prefill chunk,
    scoring with the chunk's own last `obs_window` queries (the paper's "naive"); `patched` after every
    chunk too, but the prompt's last `obs_window` tokens are appended to each chunk to score with,
    then dropped (the paper's "patched").
    """

    keep: float | None = None
    budget: int | None = None
    recent: int = DEFAULT_RECENT
    obs_window: int = 64
    schedule: str = "chunked"

    category = "score"  # the family (score, then keep the top k); `schedule` says when it evicts
    schedules = SCHEDULES
    knob = "keep"
    knob_values = (0.1, 0.3, 0.5, 0.7, 0.9)
    keeps_everything = {"keep": 1.0}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # The old name of evicts_while_decoding() (kvbench 0.1): a class attribute. It keeps working for one
        # release, with a warning.
        if "evict_during_decode" in cls.__dict__:
            flag = bool(cls.__dict__["evict_during_decode"])
            warnings.warn(
                f"{cls.__qualname__}: `evict_during_decode = {flag}` is deprecated; define "
                f"`def evicts_while_decoding(self): return {flag}` instead",
                DeprecationWarning,
                stacklevel=2,
            )
            if "evicts_while_decoding" not in cls.__dict__:
                cls.evicts_while_decoding = lambda self: flag

    def validate(self) -> None:
        require(
            self.keep is None or self.budget is None,
            "give either keep (a share) or budget (tokens), not both",
        )
        if self.keep is None and self.budget is None:
            self.keep = DEFAULT_KEEP
        if self.keep is not None:
            require(
                isinstance(self.keep, (int, float)) and 0 < self.keep <= 1,
                f"keep must be in (0, 1]; got {self.keep!r}",
            )
        if self.budget is not None:
            require(
                isinstance(self.budget, int) and self.budget >= 1,
                f"budget must be an integer >= 1; got {self.budget!r}",
            )
        require(
            isinstance(self.recent, int) and self.recent >= 0, f"recent must be an integer >= 0; got {self.recent!r}"
        )
        require(
            isinstance(self.obs_window, int) and self.obs_window >= 1,
            f"obs_window must be an integer >= 1; got {self.obs_window!r}",
        )
        require(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")

    def scoring_tokens(self) -> int:
        return self.obs_window if self.schedule == "patched" else 0

    def evicts_while_decoding(self) -> bool:
        """Most score methods leave decoding alone; H2O-style ones (and TOVA) evict at every decode step."""
        return False

    def score(self, view: KeepView) -> torch.Tensor:
        """Importance of each held entry per KV head, [h, n]; higher is kept first."""
        raise NotImplementedError

    def select(self, view: KeepView) -> torch.Tensor | None:
        plan = self.eviction_plan(view)
        if plan is None:
            return None
        candidates, k = plan
        view.candidates = candidates
        return view.top_k(self.checked_scores(view), k, candidates, recent=self.recent)

    def eviction_plan(self, view: KeepView) -> tuple[range, int] | None:
        """(the held entries competing at this step, how many of them to keep by score beyond the recent window), or
        None when the step evicts nothing."""
        if not self.evicts_now(view):
            return None
        candidates, k = self.competing(view)
        if self.budget is not None and candidates.stop <= self.budget:
            return None
        if self.budget is None and k + self.recent >= len(candidates):
            return None  # nothing to evict (before any per-layer redistribution)
        return candidates, self.layer_budget(view.layer, k, len(candidates))

    def competing(self, view: KeepView) -> tuple[range, int]:
        """(the held entries competing at this step, the mean layer's count kept by score beyond the recent window),
        whether or not that evicts anything. `budget`: everything held competes; `keep`: only the entries new since
        the last eviction (post-fill: the whole prompt)."""
        end = view.num_held - view.num_scoring  # the scoring tail is kept here; the cache drops it
        if self.budget is not None:
            return range(0, end), self.budget - min(self.recent, self.budget)
        new = end if self.schedule == "postfill" else view.num_new
        return range(end - new, end), round(self.keep * new)

    def checked_scores(self, view: KeepView) -> torch.Tensor:
        """score(view), refused unless it is one score per KV head and held entry (`view.candidates` set)."""
        scores = self.score(view)
        expected = (len(view.heads), view.num_held)
        if tuple(scores.shape) != expected:  # a misaligned score would keep the wrong entries, silently
            raise ValueError(
                f"method {self.name!r}: score() must return one score per KV head and held entry, "
                f"[heads, held] = {list(expected)} (a patched schedule's scoring tail included); "
                f"got {list(scores.shape)}"
            )
        return scores

    def evicts_now(self, view: KeepView) -> bool:
        """Whether this step evicts: every prefill chunk (post-fill: the last), and a decode step when the method
        evicts while decoding to a fixed budget."""
        if view.phase.is_decode:
            return self.evicts_while_decoding() and self.budget is not None
        return self.schedule != "postfill" or view.phase.is_last_chunk

    def evicts_at(self, view: KeepView) -> bool:
        """Deprecated (kvbench 0.1): evicts_now."""
        warnings.warn("ScoreMethod.evicts_at is deprecated; call evicts_now", DeprecationWarning, stacklevel=2)
        return self.evicts_now(view)

    def layer_budget(self, layer: int, k: int, candidates: int) -> int:
        """Entries kept by score at `layer` when the average layer keeps `k` of `candidates` entries (the
        always-kept recent window among them); PyramidKV varies it with depth."""
        return k
