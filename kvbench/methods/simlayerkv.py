"""SimLayerKV (Zhang et al., 2024, arXiv 2410.13846): some layers are "lazy", they attend mostly to the first tokens
and the most recent ones, and such a layer loses little when it keeps only those. After the prompt, a layer is lazy
when the attention of its last `n_last` queries (averaged over the query heads and those queries) on its first
`n_initial` and last `n_recent` held entries sums above `lazy_threshold`; a lazy layer keeps just those entries,
every other layer keeps everything. It never evicts while decoding.

It reads the attention of the step's last queries (`KeepView.attention_scores`), one decision per layer over all
its KV heads (it keeps the default single head group). Schedules: `postfill` decides once, after the prompt's last
chunk (the reference); `chunked` (the default, as kvbench's score methods) decides after every prefill chunk with
that chunk's last queries, so a layer found lazy at one chunk holds n_initial + n_recent entries when the next one
arrives and is judged again. A lazy layer's decision needs one host read per layer and chunk (it sets how many
entries the layer holds); none while decoding. Under query=agnostic the last queries are the context's last tokens,
not the question's, so laziness is judged without the question. `lazy_layers` holds the layers found lazy at the
last prefill decision of the request (reset by `bind`), `layer_shares` the attention share each layer measured.

Where it differs from kvpress's SimLayerKVPress, and why:
- The share is measured over, and the lazy layer keeps, the same entries: the first n_initial and the last
  n_recent held (the queries' own included). The reference sums the n_recent entries before its query window
  but keeps the last n_recent - n_last, window included; kvbench keeps what made the layer lazy.
- The default threshold is 0.9 (the reference's recommendation for Llama-3; its default 1.0 never compresses and
  is kept here as `keeps_everything`); the knob is `lazy_threshold`: a higher threshold finds fewer lazy layers,
  so it keeps more.
- A layer holding no more than n_initial + n_recent entries has nothing to drop and is not lazy (the reference
  leaves prompts shorter than n_initial + n_recent + n_last whole).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvbench.method import KeepView, Method, ModelShape, require

SIMLAYERKV_SCHEDULES = ("postfill", "chunked")


@dataclass
class SimLayerKV(Method):
    lazy_threshold: float = 0.9
    n_last: int = 1
    n_recent: int = 1024
    n_initial: int = 4
    schedule: str = "chunked"

    name = "simlayerkv"
    category = "recency"
    description = (
        "Layers whose last queries attend mostly to the first and most recent entries keep only those; "
        "others keep everything."
    )
    knob = "lazy_threshold"
    knob_increases = True
    knob_values = (0.5, 0.6, 0.7, 0.8, 0.9)
    keeps_everything = {"lazy_threshold": 1.0}
    schedules = SIMLAYERKV_SCHEDULES
    check_params = {"n_recent": 80, "lazy_threshold": 0.5}  # the kit's prompts (96, 512) are shorter than 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        self.bind(None)  # state, not parameters: not dataclass fields, so never in params()

    def validate(self) -> None:
        require(
            isinstance(self.lazy_threshold, (int, float))
            and not isinstance(self.lazy_threshold, bool)
            and 0 <= self.lazy_threshold <= 1,
            f"lazy_threshold must be in [0, 1] (1 keeps everything); got {self.lazy_threshold!r}",
        )
        for name, least in (("n_last", 1), ("n_recent", 1), ("n_initial", 0)):
            value = getattr(self, name)
            require(
                isinstance(value, int) and not isinstance(value, bool) and value >= least,
                f"{name} must be an integer >= {least}; got {value!r}",
            )
        require(
            self.schedule in SIMLAYERKV_SCHEDULES,
            f"schedule must be one of {', '.join(SIMLAYERKV_SCHEDULES)}; got {self.schedule!r}",
        )

    def bind(self, shape: ModelShape | None) -> None:
        # Per request, for tests and benchmarks: the layers lazy at the last prefill decision, each layer's share.
        self.lazy_layers: set[int] = set()
        self.layer_shares: dict[int, float] = {}

    def evicts_while_decoding(self) -> bool:
        return False

    def select(self, view: KeepView) -> torch.Tensor | None:
        phase = view.phase
        if phase.is_decode or (self.schedule == "postfill" and not phase.is_last_chunk):
            return None
        held = view.num_held
        if held <= self.n_initial + self.n_recent:  # nothing to drop
            self.lazy_layers.discard(view.layer)
            return None
        attention = view.attention_scores(last=self.n_last)  # [h, n], each row sums to 1
        looked_at = attention[:, : self.n_initial].sum(dim=-1) + attention[:, held - self.n_recent :].sum(dim=-1)
        share = looked_at.mean().item()  # over the KV heads: each has as many query heads
        self.layer_shares[view.layer] = share
        # Threshold 1 never compresses (a share summed in floats may pass 1 by a rounding).
        if self.lazy_threshold >= 1 or share <= self.lazy_threshold:
            self.lazy_layers.discard(view.layer)
            return None
        self.lazy_layers.add(view.layer)
        return view.keep_ranges(range(self.n_initial), range(held - self.n_recent, held))
