"""Per-task footprint tallies of an lm-eval run: a task's footprint is the mean over its requests; each
document's own footprint is kept too, for the per-sample rows (kvbench.lmeval.samples)."""

from __future__ import annotations

from collections import defaultdict

from kvbench.ledger import FootprintStats

AVERAGED = ("kv_footprint", "kv_peak", "kv_peak_bytes", "kv_transient_peak_bytes", "tokens")


class FootprintTally:
    def __init__(self):
        self.per_task: dict[str, list[dict]] = defaultdict(list)
        self.seconds = 0.0  # time spent in the engine, all requests

    def add(
        self,
        task: str | None,
        *stats: FootprintStats,
        doc_id: int | None = None,
        context_group: str | None = None,
        device_peak_bytes: dict[str, int] | None = None,
    ) -> None:
        """One lm-eval request of document `doc_id`. A rolling-loglikelihood request scored in several windows
        passes them all: it counts once, with its windows' mean footprint and their largest peaks.
        `device_peak_bytes`: the allocator's peak on each GPU over the request (reset when it began)."""
        row = {
            "kv_footprint": sum(s.kv_footprint for s in stats) / len(stats),
            "kv_peak": max(s.kv_peak for s in stats),
            "kv_peak_bytes": max(s.kv_peak_bytes for s in stats),
            "kv_transient_peak_bytes": max(s.kv_transient_peak_bytes for s in stats),
            "tokens": sum(s.tokens for s in stats),
        }
        if any(s.extra_tokens for s in stats):  # a method's own forward passes (KVzip): compute apart from tokens
            row["extra_tokens"] = sum(s.extra_tokens for s in stats)
        if device_peak_bytes:
            row["device_peak_bytes"] = dict(device_peak_bytes)
        if doc_id is not None:
            row["doc_id"] = doc_id
        if context_group:
            row["context_group"] = context_group
        self.per_task[task or "unknown"].append(row)

    def count(self, request, *runs) -> None:
        """An lm-eval request's footprint (and its allocator peaks) under its task and document (the per-sample rows
        read it there). `runs`: the Generation or Scorings it ran as (a rolling window each)."""
        doc = getattr(request, "doc", None) or {}
        peaks: dict[str, int] = {}
        for run in runs:
            for device, value in run.device_peak_bytes.items():
                peaks[device] = max(peaks.get(device, 0), value)
        self.add(
            request.task_name,
            *[run.stats for run in runs],
            doc_id=getattr(request, "doc_id", None),
            context_group=doc.get("context_group") if isinstance(doc, dict) else None,
            device_peak_bytes=peaks,
        )

    @staticmethod
    def counted(requests) -> list[bool]:
        """Whether each request counts. With several processes, lm-eval pads a process's requests with copies of
        its last one, so that all run as many: those copies ran, but count once."""
        seen: dict[int, int] = {}
        counted = []
        for request in requests:
            seen[id(request)] = seen.get(id(request), 0) + 1
            counted.append(seen[id(request)] <= (getattr(request, "repeats", None) or 1))
        return counted

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

    def per_document(self, task: str) -> dict[int, dict]:
        """Each document's figures: the mean footprint of its requests (a multiple-choice question has one per
        choice), their largest peaks, their tokens summed, and its context_group when it has one."""
        requests: dict[int, list[dict]] = defaultdict(list)
        for row in self.per_task.get(task, []):
            if "doc_id" in row:
                requests[row["doc_id"]].append(row)
        documents = {}
        for doc_id, rows in requests.items():
            documents[doc_id] = {
                "kv_footprint": sum(r["kv_footprint"] for r in rows) / len(rows),
                "kv_peak": max(r["kv_peak"] for r in rows),
                "kv_peak_bytes": max(r["kv_peak_bytes"] for r in rows),
                "kv_transient_peak_bytes": max(r["kv_transient_peak_bytes"] for r in rows),
                "tokens": sum(r["tokens"] for r in rows),
                "requests": len(rows),
            }
            if any("extra_tokens" in r for r in rows):
                documents[doc_id]["extra_tokens"] = sum(r.get("extra_tokens", 0) for r in rows)
            if "context_group" in rows[0]:
                documents[doc_id]["context_group"] = rows[0]["context_group"]
        return documents

    def summary(self) -> dict:
        tasks = {}
        for task, rows in sorted(self.per_task.items()):
            tasks[task] = {key: sum(r[key] for r in rows) / len(rows) for key in AVERAGED}
            tasks[task]["kv_peak_bytes_max"] = max(r["kv_peak_bytes"] for r in rows)
            tasks[task]["kv_transient_peak_bytes_max"] = max(r["kv_transient_peak_bytes"] for r in rows)
            tasks[task]["requests"] = len(rows)
            if any("extra_tokens" in r for r in rows):
                tasks[task]["extra_tokens"] = sum(r.get("extra_tokens", 0) for r in rows) / len(rows)
            tasks[task].update(_device_peaks(rows))
        tokens = sum(r["tokens"] for rows in self.per_task.values() for r in rows)
        return {
            "requests": sum(len(rows) for rows in self.per_task.values()),
            "tokens": tokens,
            "wall_time_s": self.seconds,
            "tokens_per_second": tokens / self.seconds if self.seconds else None,
            **_device_peaks([r for rows in self.per_task.values() for r in rows]),
            "tasks": tasks,
        }


def _device_peaks(rows: list[dict]) -> dict:
    """The allocator's largest per-request peak on each GPU (weights included), and their sum: an upper bound on
    what one request needed over all GPUs (each GPU's largest may come from a different request). Nothing on a CPU."""
    peaks: dict[str, int] = {}
    for row in rows:
        for device, value in row.get("device_peak_bytes", {}).items():
            peaks[device] = max(peaks.get(device, 0), value)
    if not peaks:
        return {}
    return {
        "gpu_peak_allocated_bytes": dict(sorted(peaks.items())),
        "gpu_peak_allocated_bytes_total": sum(peaks.values()),
    }
