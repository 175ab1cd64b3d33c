"""Per-task footprint tallies of an lm-eval run: a task's footprint is the mean over its requests."""

from __future__ import annotations

from collections import defaultdict

from kvbench.ledger import FootprintStats

AVERAGED = ("kv_footprint", "kv_peak", "kv_peak_bytes", "tokens")


class FootprintTally:
    def __init__(self):
        self.per_task: dict[str, list[dict]] = defaultdict(list)
        self.seconds = 0.0  # time spent in the engine, all requests

    def add(self, task: str | None, *stats: FootprintStats) -> None:
        """One lm-eval request. A rolling-loglikelihood request scored in several windows passes them all:
        it counts once, with its windows' mean footprint and their largest peaks."""
        self.per_task[task or "unknown"].append({
            "kv_footprint": sum(s.kv_footprint for s in stats) / len(stats),
            "kv_peak": max(s.kv_peak for s in stats),
            "kv_peak_bytes": max(s.kv_peak_bytes for s in stats),
            "tokens": sum(s.tokens for s in stats),
        })

    def export(self) -> dict:
        """This process's requests and engine time, handed over (to rank 0's tally) and cleared here."""
        part = {"per_task": dict(self.per_task), "seconds": self.seconds}
        self.per_task, self.seconds = defaultdict(list), 0.0
        return part

    def absorb(self, part: dict) -> None:
        """Another process's export: its requests join this tally, its engine time adds up."""
        for task, rows in part["per_task"].items():
            self.per_task[task].extend(rows)
        self.seconds += part["seconds"]

    def summary(self) -> dict:
        tasks = {}
        for task, rows in sorted(self.per_task.items()):
            tasks[task] = {key: sum(r[key] for r in rows) / len(rows) for key in AVERAGED}
            tasks[task]["kv_peak_bytes_max"] = max(r["kv_peak_bytes"] for r in rows)
            tasks[task]["requests"] = len(rows)
        tokens = sum(r["tokens"] for rows in self.per_task.values() for r in rows)
        return {
            "requests": sum(len(rows) for rows in self.per_task.values()),
            "tokens": tokens,
            "wall_time_s": self.seconds,
            "tokens_per_second": tokens / self.seconds if self.seconds else None,
            "tasks": tasks,
        }
