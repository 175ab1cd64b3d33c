"""Full attention: every KV entry is kept. The baseline of every leaderboard."""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.method import Method


@dataclass
class Full(Method):
    name = "full"
    category = "full"
    description = "Keeps every KV entry (the baseline)."

    def evicts_while_decoding(self) -> bool:
        return False
