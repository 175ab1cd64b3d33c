"""lm-eval's process_results for every kvbench task: the task's metric, a common `score`, and the footprint.

`score` is the task's headline metric under one name, so that groups can average across tasks whose
metrics differ. The kvbench backend returns a `str` subclass carrying `footprint`; other backends (hf)
return plain strings and the footprint keys are then left out (lm-eval only aggregates keys it sees).
"""

from __future__ import annotations

from kvbench.data import metrics


def score(doc: dict, output: str) -> float:
    kind, answers = doc["metric"], list(doc["answers"])
    if kind == "substring_exact_match":
        return metrics.substring_exact_match(output, answers, doc.get("answer_prefix") or "")
    if kind == "ruler_recall":
        return metrics.ruler_recall(output, answers)
    if kind == "label_accuracy":
        return metrics.label_accuracy(output, answers[0])
    if kind == "ndcg_at_10":
        qrels = {doc_id: int(label) for doc_id, _, label in (q.rpartition(":") for q in doc["qrels"])}
        return metrics.ndcg_at_10(output, qrels)
    raise ValueError(f"unknown metric {kind!r} in a kvbench document (task {doc.get('task')!r})")


def process_results(doc: dict, results: list) -> dict:
    output = results[0]
    value = score(doc, output)
    out = {doc["metric"]: value, "score": value}
    footprint = getattr(output, "footprint", None)
    if footprint:
        out["kv_footprint"] = float(footprint["kv_footprint"])
        out["kv_peak"] = float(footprint["kv_peak"])
        if footprint.get("trace") is not None:  # lm-eval writes each sample's metrics into its samples file
            out["kv_trace"] = footprint["trace"]
    return out


def trace_points(traces: list) -> float:
    """lm-eval's aggregate of kv_trace: the mean number of points per sample (the traces themselves are in the
    samples file, one per sample, with --log_samples)."""
    return sum(len(trace) for trace in traces) / len(traces)
