"""Expected Attention (Devoto, Jeblick & Jégou, 2025, arXiv 2510.00636; kvpress's ExpectedAttentionPress): keep the
entries that the queries still to come are expected to attend to most.

The queries of each query head are modelled as a Gaussian, their mean mu and covariance S taken over the step's queries
before RoPE (the first `n_sink` positions left out: attention sinks make outlier queries). The future queries sit at
the `n_future_positions` positions after the step, so both are moved there by R, the mean of RoPE's rotation matrices
over those positions: mu' = R mu, S' = R S R^T. For a query q ~ N(mu', S') and a key k, E[exp(s q.k)] = exp(s mu'.k +
s^2 k^T S' k / 2) (s the model's attention scale, 1/sqrt(d) in most), so an entry's expected logit is s mu'.k + s^2 k^T S' k / 2 (the
second term only with `use_covariance`). A softmax over the competing entries, averaged over the query heads of each
KV head, is its expected attention; with `use_vnorm` it is multiplied by ||v|| (after adding `epsilon`), the size of
what the entry would add to the output. Entries at the first `n_sink` positions are kept before any other (+inf).

It reads the step's post-RoPE queries and undoes their rotation at their own positions (RoPE turns pairs of dimensions,
an orthogonal map, so the inverse is exact); the model's inverse frequencies come from `ModelShape.rope_inv_freq`,
transformers' own (scaled variants included), and a model without one fixed set is refused in `bind`. A RoPE
`attention_factor` (YaRN) stays in the un-rotated queries, as it stays in every future query. Which queries:
- postfill: the evicting step's (the whole prompt's when it is one chunk; with chunked prefill, the last chunk's);
- chunked: the chunk's own, as the naive schedule scores every chunk as if it were the prompt;
- patched: the prompt's last `obs_window` tokens' (the tail appended to the chunk; at the last chunk its own last
  `obs_window`, the same tokens): that is the schedule's point, and the chunk's thousands would swamp them;
- query=agnostic: the context is prefilled alone, so the statistics come from the context's queries only.
The future positions follow the step's last position: the prompt's end (post-fill, patched), or in the chunked
schedule the chunk's end, all that schedule knows.

Where it differs from kvpress, deliberately:
- The reference takes every query of the prompt; a kvbench method sees one step's queries, so with chunked prefill the
  post-fill statistics are the last chunk's. Summing statistics over chunks would keep [layers, heads, d, d] per
  request and need select() overridden, which a score method wrapped by adakv or chunkkv must not do.
- The sinks are the first `n_sink` positions of the sequence, not of each compressed span (kvpress's ChunkPress would
  keep the first entries of every chunk); they score +inf, not the layer's largest score + 1 (a host read), so they
  come first under any wrapper too. As every score method here, they are kept within the budget (`keep`, `budget`),
  beside kvbench's always-kept `recent` window, which kvpress does not have.
- The logit scale is the model's attention scale s, with s^2 for the covariance term; kvpress writes 1/sqrt(d) and 1/d,
  the same numbers wherever s = 1/sqrt(d) (Llama, Qwen, Mistral).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kvbench.method import SCORE_BLOCK_BYTES, KeepView, ModelShape, ScoreMethod, require


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """RoPE's quarter turn in the rotate-half layout: dimension i pairs with i + d/2."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE's angles at `positions` [m]: [m, 2f], fp32 products as transformers computes them."""
    angles = positions.float()[:, None] * inv_freq.float()
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., d] turned by the angles of cos, sin [..., 2f] on its first 2f dimensions; the rest are not rotated."""
    rotary = cos.shape[-1]
    turned = x[..., :rotary] * cos + rotate_half(x[..., :rotary]) * sin
    return torch.cat([turned, x[..., rotary:]], dim=-1)


def unrotate(queries: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Pre-RoPE queries from post-RoPE ones [..., m, d] at `positions` [m]: the rotation by the opposite angles."""
    cos, sin = rope_cos_sin(inv_freq, positions)
    return rotate(queries.float(), cos, -sin)


def average_rotation(inv_freq: torch.Tensor, head_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[d, d]: the mean of RoPE's rotation matrices at `positions` (linear in cos and sin, so it is the matrix of the
    mean angles' cos and sin; not itself a rotation: it shrinks the fast-turning pairs)."""
    cos, sin = rope_cos_sin(inv_freq, positions)
    identity = torch.eye(head_dim, device=inv_freq.device)
    return rotate(identity, cos.mean(dim=0), sin.mean(dim=0)).T  # row i is the map applied to e_i: its column i


@dataclass
class ExpectedAttention(ScoreMethod):
    n_future_positions: int = 512
    n_sink: int = 4
    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0

    name = "expected_attention"
    description = (
        "Keeps the entries that future queries (a Gaussian fitted to the step's queries, moved by RoPE over the next "
        "positions) are expected to attend to most, times ||v||; sinks first."
    )

    def validate(self) -> None:
        super().validate()
        require(
            isinstance(self.n_future_positions, int)
            and not isinstance(self.n_future_positions, bool)
            and self.n_future_positions >= 1,
            f"n_future_positions must be an integer >= 1; got {self.n_future_positions!r}",
        )
        require(
            isinstance(self.n_sink, int) and not isinstance(self.n_sink, bool) and self.n_sink >= 0,
            f"n_sink must be an integer >= 0; got {self.n_sink!r}",
        )
        for flag in ("use_covariance", "use_vnorm"):
            value = getattr(self, flag)
            require(isinstance(value, bool), f"{flag} must be true or false; got {value!r}")
        require(
            isinstance(self.epsilon, (int, float))
            and not isinstance(self.epsilon, bool)
            and math.isfinite(self.epsilon)
            and self.epsilon >= 0,
            f"epsilon must be a finite number >= 0; got {self.epsilon!r}",
        )

    def bind(self, shape: ModelShape) -> None:
        frequencies = shape.rope_inv_freq
        require(
            frequencies is not None and 0 < 2 * len(frequencies) <= shape.head_dim,
            f"method {self.name!r} undoes and predicts RoPE's rotation, so it needs the model's one fixed set of RoPE "
            "frequencies (ModelShape.rope_inv_freq); this model has none (no RoPE, one set per layer type, or a "
            "dynamic/longrope scaling that changes them with the length)",
        )
        self._inv_freq = torch.tensor(frequencies, dtype=torch.float32)

    def score(self, view: KeepView) -> torch.Tensor:
        inv_freq = getattr(self, "_inv_freq", None)
        require(inv_freq is not None, f"method {self.name!r}: bind(shape) must be called before score()")
        candidates = view.candidates if view.candidates is not None else range(0, view.num_held - view.num_scoring)
        heads, dim, device = len(view.heads), view.keys.shape[-1], view.keys.device
        inv_freq = self._inv_freq = inv_freq.to(device)
        mean, covariance = self.query_statistics(view, inv_freq)
        # The future queries' positions: those right after the step's last.
        last = view.positions[0, view.num_held - view.queries.shape[2] :].max()
        future = last + 1 + torch.arange(self.n_future_positions, device=device)
        rotation = average_rotation(inv_freq, dim, future)
        mean = mean @ rotation.T  # [h, r, d]
        if covariance is not None:
            covariance = rotation @ covariance @ rotation.T  # [h, r, d, d]
        # The candidates' keys a block at a time, so that neither an fp32 copy of them nor k S for all exists at once.
        keys = view.keys[:, candidates.start : candidates.stop]
        logits = torch.empty(heads, mean.shape[1], keys.shape[1], device=device)
        block = max(1, SCORE_BLOCK_BYTES // (4 * heads * mean.shape[1] * dim))
        for start in range(0, keys.shape[1], block):
            part = keys[:, start : start + block].float()
            logit = torch.einsum("hrd,hnd->hrn", mean, part) * view.scaling
            if covariance is not None:
                spread = (torch.einsum("hnd,hrde->hrne", part, covariance) * part[:, None]).sum(dim=-1)
                logit += spread * (view.scaling**2 / 2)
            logits[..., start : start + block] = logit
        sink = view.positions[:, candidates.start : candidates.stop] < self.n_sink  # [h, m]
        weights = logits.masked_fill(sink[:, None], float("-inf")).softmax(dim=-1).mean(dim=1)  # [h, m]
        if self.use_vnorm:
            values = view.values[:, candidates.start : candidates.stop]
            weights = (weights + self.epsilon) * torch.linalg.vector_norm(values, dim=-1, dtype=torch.float32)
        # All-sink candidates leave a softmax over nothing (NaN); every one of them is replaced here.
        weights = torch.where(sink, float("inf"), weights)
        scores = torch.zeros(heads, view.num_held, device=device)
        scores[:, candidates.start : candidates.stop] = weights
        return scores

    def query_statistics(self, view: KeepView, inv_freq: torch.Tensor):
        """Mean [h, r, d] and covariance [h, r, d, d] (None without use_covariance) of the pre-RoPE queries this
        schedule scores with (module docstring), those at the first n_sink positions left out; taken a block of
        queries at a time (two passes: the mean, then the spread about it) so that no fp32 copy of a long chunk's
        queries exists at once. With no query past the sinks (a prompt of n_sink tokens), every candidate is a sink."""
        count = view.queries.shape[2]
        positions = view.positions[0, view.num_held - count :]  # the step's tokens are the last held entries
        if self.schedule != "patched":
            span = slice(0, view.num_new)  # the step's own tokens
        elif view.num_scoring:
            span = slice(count - view.num_scoring, count)  # the prompt's last tokens, appended to score with
        else:
            span = slice(max(0, count - self.obs_window), count)  # the last chunk: the same tokens, its own
        queries, positions = view.queries[:, :, span], positions[span]
        weight = (positions >= self.n_sink).float()  # on the device: no host read of how many
        total = weight.sum().clamp(min=1)
        heads, per_head, length, dim = queries.shape
        block = max(1, SCORE_BLOCK_BYTES // (4 * heads * per_head * dim))
        blocks = [slice(start, start + block) for start in range(0, length, block)]
        mean = torch.zeros(heads, per_head, dim, device=queries.device)
        for part in blocks:
            mean += torch.einsum("hrmd,m->hrd", unrotate(queries[:, :, part], positions[part], inv_freq), weight[part])
        mean /= total
        if not self.use_covariance:
            return mean, None
        covariance = torch.zeros(heads, per_head, dim, dim, device=queries.device)
        for part in blocks:
            centred = unrotate(queries[:, :, part], positions[part], inv_freq) - mean[:, :, None]
            covariance += torch.einsum("hrmd,hrme->hrde", centred * weight[part, None], centred)
        return mean, covariance / total
