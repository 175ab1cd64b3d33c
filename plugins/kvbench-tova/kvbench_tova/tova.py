"""TOVA, "Transformers are Multi-State RNNs" (Oren et al., 2024): token omission via attention.

At every step, each KV head keeps the `budget` entries that the newest query attends to most
(attention pooled over the query heads sharing the KV head), during the prompt and while decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import kvbench


@dataclass
class Tova(kvbench.ScoreMethod):
    budget: int | None = 512
    recent: int = 0

    name = "tova"
    category = "score"
    description = "Keeps the entries the newest query attends to most (fixed budget, also while decoding)."
    knob = "budget"
    knob_values = (32, 64, 128, 256)
    keeps_everything = {"budget": 10**9}

    def evicts_while_decoding(self) -> bool:
        return True

    def score(self, view: kvbench.KeepView):
        return view.attention_scores(last=1)
