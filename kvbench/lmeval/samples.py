"""Per-sample rows of a kvbench lm-eval run: each document's metric values beside the footprint it ran with.

lm-eval keeps per-document results only with `--log_samples`. A leaderboard's intervals and paired comparisons
need them in every run, so for a kvbench model lm-eval's `evaluate` always logs samples (the start-up hook asks it
to; kvbench/lmeval/hook.py) and hands them to `attach`:

- asked for (`--log_samples`, or a traced sweep cell): lm-eval's own rows gain the document's measured footprint
  and its `context_group`, and are written as lm-eval writes them;
- not asked for: they are cut down to compact rows (below) under `results["kvbench_samples"]`, which the hook
  writes as `samples_<task>_<date>.jsonl` beside lm-eval's `results_<date>.json`, and `kvbench sweep` as
  `samples_<task>.jsonl` beside its `results.json`. No prompt text and no response is kept.

A compact row: `doc_id`, `filter`, the task's metric values under their lm-eval names (as `--log_samples` rows
carry them), the document's `kv_footprint`, `kv_peak`, `kv_peak_bytes`, `tokens` and `requests` (lm-eval requests:
a multiple-choice question has one per choice), and `context_group` for the documents of a multi-question task
(the shared context: one unit when resampling).
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_KEY = "kvbench_samples"  # where compact rows wait in lm-eval's results dict until they are written
FOOTPRINT_KEYS = ("kv_footprint", "kv_peak", "kv_peak_bytes", "tokens", "requests", "context_group")
TRACE_METRIC = "kv_trace"  # a metric of kvbench's tasks that is a whole trace, kept in full rows only


def attach(tally, results: dict, keep_full: bool, selected: dict | None = None) -> dict:
    """Give each logged sample of `results` its document's footprint from `tally`; unless `keep_full`, replace
    lm-eval's rows (`results["samples"]`) by compact ones under `results[RESULTS_KEY]`. `selected`: lm-eval's
    `samples` argument ({task: [doc indices]}), whose logged doc_ids are the chosen indices, not the positions
    the requests carried."""
    logged = results.pop("samples", None) or {}
    compact = {}
    for task, rows in logged.items():
        documents = tally.per_document(task)
        chosen = (selected or {}).get(task)
        position = {doc_id: i for i, doc_id in enumerate(chosen)} if chosen else None
        for row in rows:
            measured = documents.get(position[row["doc_id"]] if position else row["doc_id"])
            if measured:
                row.update(measured)
        compact[task] = [compact_row(row) for row in rows]
    if keep_full:
        results["samples"] = logged
    else:
        results[RESULTS_KEY] = compact
    return results


def compact_row(row: dict) -> dict:
    """An lm-eval sample row without its document, prompt and responses."""
    metrics = [name for name in row.get("metrics", []) if name != TRACE_METRIC]
    out = {"doc_id": row["doc_id"], "filter": row.get("filter", "none")}
    out.update({name: row[name] for name in metrics if name in row})
    out.update({key: row[key] for key in FOOTPRINT_KEYS if key in row})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    from lm_eval.utils import handle_non_serializable

    from kvbench.files import write_atomically

    write_atomically(path, "".join(json.dumps(row, default=handle_non_serializable) + "\n" for row in rows))


def write_beside_lm_eval_results(tracker, compact: dict[str, list[dict]]) -> None:
    """lm-eval's EvaluationTracker has just written `results_<date>.json` (or `<name>_<date>.json`): write each
    task's compact rows as `samples_<task>_<date>.jsonl` in the same folder, as `--log_samples` names its files."""
    path = Path(tracker.output_path)
    folder = path.parent if path.suffix == ".json" else path / str(tracker.general_config_tracker.model_name_sanitized)
    for task, rows in compact.items():
        write_jsonl(folder / f"samples_{task}_{tracker.date_id}.jsonl", rows)


def samples_path(results_path: Path, task: str) -> Path:
    """Where the samples of `task` lie beside a results file: `samples_<task>.jsonl` beside a sweep's
    `results.json`; `samples_<task>_<date>.jsonl` beside lm-eval's `results_<date>.json` (or `<name>_<date>.json`
    with `--output_path <name>.json`)."""
    stem = results_path.stem
    date = stem.rsplit("_", 1)[1] if "_" in stem else None
    return results_path.parent / (f"samples_{task}_{date}.jsonl" if date else f"samples_{task}.jsonl")


def read_samples(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number} is not JSON ({error.msg})") from None
    return rows
