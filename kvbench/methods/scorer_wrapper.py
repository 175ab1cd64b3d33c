"""The base of methods that take their scores from another score method (`scorer=NAME`) and change only which
entries are kept: Ada-KV spreads a layer's budget over its heads, ChunkKV keeps whole chunks.

The scorer's own parameters come flat beside the wrapper's (`method=adakv,scorer=snapkv,keep=0.25,kernel=7`): those
the wrapper does not have are collected in `scorer_params` and checked against the scorer, which is refused with its
valid parameters named. The budget and schedule (`keep`, `budget`, `recent`, `obs_window`, `schedule`, `kv_bits`) are
the wrapper's and are handed to the scorer, so both read them alike. `params()` gives them back flat, the form
`load_method` and a sweep's cell take.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from kvbench.method import KeepView, ModelShape, ScoreMethod, require


@dataclass
class ScorerWrapper(ScoreMethod):
    scorer: str = "snapkv"
    scorer_params: dict = field(default_factory=dict)

    extra_params: ClassVar[str] = "scorer_params"  # where load_method puts parameters that are not the wrapper's

    def validate(self) -> None:
        super().validate()
        self.inner = build_scorer(self, self.scorer, self.scorer_params)

    def bind(self, shape: ModelShape) -> None:
        self.inner.bind(shape)

    def score(self, view: KeepView) -> torch.Tensor:
        return self.inner.score(view)

    def scoring_tokens(self) -> int:
        return self.inner.scoring_tokens()

    def params(self) -> dict:
        return flat_params(self)


def build_scorer(owner: ScoreMethod, scorer: str, scorer_params: dict) -> ScoreMethod:
    """The score method `scorer` with its own parameters and `owner`'s budget and schedule, refused (naming what is
    wrong) unless it is a registered score method that only scores."""
    from kvbench.plugins import coerce_params, method_class  # the registry imports the methods: import late

    scorer_class = method_class(scorer)
    require(
        issubclass(scorer_class, ScoreMethod)
        and not issubclass(scorer_class, ScorerWrapper)
        and scorer_class.select is ScoreMethod.select,
        f"scorer must be a score method that only scores (its own select() is not wrapped); got {scorer!r}",
    )
    try:
        own = coerce_params(scorer_class, scorer_params)
    except ValueError as error:
        raise ValueError(f"method {owner.name!r} with scorer {scorer!r}: {error}") from None
    # The budget and schedule, and any parameter both have (cake's and snapkv's `kernel`), are the owner's.
    common = {f.name for f in dataclasses.fields(scorer_class)} & {f.name for f in dataclasses.fields(owner)}
    shared = {name: getattr(owner, name) for name in common}
    return scorer_class(**{**shared, **own})


def flat_params(method: ScoreMethod) -> dict:
    """A wrapper's parameters as load_method takes them: its own, then its scorer's (`scorer_params`) beside them."""
    own = {f.name: getattr(method, f.name) for f in dataclasses.fields(method) if f.name != "scorer_params"}
    return {**own, **method.scorer_params}
