"""Per-sample metrics of the four task categories, as HELMET scores them.

Every function takes the model's raw output and returns a float in [0, 1]; unparsable output scores 0,
never raises, because a weak model (or a heavily evicted cache) produces garbage and that is a result.
"""

from __future__ import annotations

import re
import string

import numpy as np

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """HELMET's (SQuAD-style) normalisation: lower-case, drop punctuation and articles, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def substring_exact_match(prediction: str, answers: list[str] | str, prefix: str = "") -> float:
    """1.0 when some normalised gold answer occurs inside the normalised prediction. With `prefix` (RAG's
    "Answer:", JSON KV's "Corresponding value:"), HELMET also scores the answer parsed after it and keeps the best."""
    answers = [answers] if isinstance(answers, str) else answers
    candidates = [prediction] + ([parse_output(prediction, prefix)] if prefix else [])
    return float(any(normalize_answer(a) in normalize_answer(c) for a in answers for c in candidates if c is not None))


def ruler_recall(prediction: str, answers: list[str]) -> float:
    """RULER's score: the share of gold strings found in the output (case-insensitive, no other normalisation)."""
    if not answers:
        raise ValueError("ruler_recall needs at least one gold string")
    pred = prediction.lower()
    return sum(a.lower() in pred for a in answers) / len(answers)


def parse_output(output: str, prefix: str) -> str | None:
    """HELMET's parse_output: the rest of the line after `prefix` (case-insensitive), else the output's first line
    (which may be empty), stripped and without a repeated prefix. None only when neither is found."""
    for pattern in (re.escape(prefix) + r"(.*)(?:\n|$)", r"^(.*)(?:\n|$)"):
        match = re.search(pattern, output, flags=re.IGNORECASE)
        if match is not None:
            return re.sub("^" + re.escape(prefix), "", match[1].strip(), flags=re.IGNORECASE).strip()
    return None


def parse_label(output: str, prefix: str = "label:") -> str | None:
    """The answer after `prefix` on its line, else the first line (HELMET's parse_output). None when empty."""
    return parse_output(output, prefix) or None


def label_accuracy(output: str, label: str, prefix: str = "label:") -> float:
    """ICL accuracy: the parsed label equals the gold label after normalisation (exact match, not substring)."""
    parsed = parse_label(output, prefix)
    return float(parsed is not None and normalize_answer(parsed) == normalize_answer(label))


def parse_ranking(output: str) -> list[str]:
    """Document ids in the order given by the longest "ID3 > ID1 > ..." chain in the output (duplicates dropped).

    As HELMET: brackets, colons and the word "id" are ignored, so "[ID: 3] > [ID: 1]" parses too.
    No chain at all gives an empty ranking.
    """
    cleaned = re.sub(r"[\[\]:]", "", output).lower().replace("id", "")
    chains = [m.group(0) for m in re.finditer(r"\d+(?:\s*>\s*\d+)*", cleaned)]
    if not chains:
        return []
    longest = max(chains, key=len)  # first of the longest, as max keeps the earliest on ties
    ranking: list[str] = []
    for doc_id in (part.strip() for part in longest.split(">")):
        if doc_id not in ranking:
            ranking.append(doc_id)
    return ranking


def ndcg_at_10(output: str, qrels: dict[str, int]) -> float:
    """NDCG@10 of the parsed ranking as HELMET computes it (trec_eval's ndcg_cut.10 through pytrec_eval).

    The run is the whole parsed ranking, best first: an id the labels do not know still takes its rank and
    earns nothing, pushing the documents after it down; a repeated id counts at its first place only. Gains
    are the graded labels themselves, discounted by log2(rank + 1) (scikit-learn's DCG); the ideal DCG ranks
    every labelled document by its label. A query without any relevant document scores 0.
    """
    from sklearn.metrics import dcg_score

    ideal = sorted((float(label) for label in qrels.values()), reverse=True)
    if not any(gain > 0 for gain in ideal):
        return 0.0

    def dcg(gains: list[float]) -> float:
        if not gains:
            return 0.0
        # Strictly decreasing scores keep the order as given (no ties for sklearn to average); the trailing
        # zero-gain document gives sklearn the two columns it needs and changes no sum.
        gains = gains + [0.0]
        return float(dcg_score(np.array([gains]), np.array([np.arange(len(gains), 0, -1)]), k=10))

    return dcg([float(qrels.get(doc_id, 0)) for doc_id in parse_ranking(output)]) / dcg(ideal)
