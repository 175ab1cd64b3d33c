"""PruLong (Bhaskar et al., 2025, arXiv 2506.17121): heads whose learned score (a hard-concrete
mask's log-alpha, trained end to end with the next-token loss) is highest keep the full cache;
the rest keep attention sinks plus a local window."""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.methods.head_pattern import HeadPatternMethod


@dataclass
class PruLong(HeadPatternMethod):
    name = "prulong"
    description = "Full cache for the heads PruLong learned to keep, sinks + window for the rest."
