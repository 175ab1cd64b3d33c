"""The four task metrics on hand-worked examples, unparsable outputs included."""

import math

import pytest

from kvbench.data import metrics
from kvbench.data.results import process_results


def test_normalisation_and_substring_exact_match():
    assert metrics.normalize_answer("  The Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert metrics.substring_exact_match("It is the Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert metrics.substring_exact_match("Answer: an apple", "Apple") == 1.0  # article and case dropped
    assert metrics.substring_exact_match("I do not know", ["Paris", "France"]) == 0.0
    assert metrics.substring_exact_match("", ["Paris"]) == 0.0


def test_ruler_recall_is_the_share_of_gold_strings_found():
    golds = ["1234567", "7654321", "1111111", "2222222"]
    assert metrics.ruler_recall("the numbers are 1234567, 7654321 and 1111111", golds) == 0.75
    assert metrics.ruler_recall("no numbers at all", golds) == 0.0
    assert metrics.ruler_recall("UUID ABCD-ef", ["abcd-EF"]) == 1.0  # case-insensitive
    with pytest.raises(ValueError):
        metrics.ruler_recall("x", [])


def test_label_parsing_and_accuracy():
    assert metrics.parse_label(" 3\nlabel: 4") == "4"  # the prefix wins over the first line
    assert metrics.parse_label(" 12\nmore text") == "12"
    assert metrics.parse_label("label: label: 5") == "5"  # a repeated prefix is dropped
    assert metrics.parse_label("   ") is None
    assert metrics.label_accuracy(" 3", "3") == 1.0
    assert metrics.label_accuracy(" 13", "3") == 0.0  # exact, not substring
    assert metrics.label_accuracy("", "3") == 0.0


def test_ranking_parse():
    assert metrics.parse_ranking("Ranking: ID3 > ID1 > ID2") == ["3", "1", "2"]
    assert metrics.parse_ranking("[ID: 7] > [ID: 2] > 7 > 9") == ["7", "2", "9"]  # duplicates dropped
    assert metrics.parse_ranking("5 then 4 > 8 > 6") == ["4", "8", "6"]  # the longest chain
    assert metrics.parse_ranking("I cannot rank these documents.") == []


def test_ndcg_at_10_hand_worked():
    qrels = {"1": 2, "2": 1, "3": 0}
    assert metrics.ndcg_at_10("ID1 > ID2 > ID3", qrels) == pytest.approx(1.0)
    # Reversed: DCG = 0/log2(2) + 1/log2(3) + 2/log2(4) = 1.6309; ideal = 2 + 1/log2(3) = 2.6309.
    assert metrics.ndcg_at_10("ID3 > ID2 > ID1", qrels) == pytest.approx(1.6309298 / 2.6309298)
    # Only ID2 ranked: it earns 1 at rank 1; the unranked ID1 earns nothing (as trec_eval).
    assert metrics.ndcg_at_10("ID2", qrels) == pytest.approx(1 / 2.6309298)
    assert metrics.ndcg_at_10("no ranking here", qrels) == 0.0
    assert metrics.ndcg_at_10("ID9 > ID8", qrels) == 0.0  # unknown ids only
    assert metrics.ndcg_at_10("ID1 > ID2", {"1": 0, "2": 0}) == 0.0  # nothing relevant


def helmet_ndcg_at_10(ranking: list[str], qrels: dict[str, int]) -> float:
    """The definition HELMET's trec_eval call applies, written out: rank i (from 1) of the run earns its label
    (0 for an id the labels lack) over log2(i + 1), down to rank 10; the ideal ranks the labels."""

    def dcg(gains):
        return sum(g / math.log2(i + 2) for i, g in enumerate(gains[:10]))

    ideal = dcg(sorted(qrels.values(), reverse=True))
    return dcg([qrels.get(doc, 0) for doc in ranking]) / ideal if ideal else 0.0


NDCG_QRELS = {"1": 3, "2": 2, "3": 1, "4": 0, "5": 0}
NDCG_TABLE = [  # output, the run trec_eval sees (after HELMET's parsing), the value by hand
    ("ID1 > ID2 > ID3 > ID4", ["1", "2", "3", "4"], 1.0),
    # an unknown id takes rank 1 and earns nothing: 3/log2(3) + 2/2 + 1/log2(5) over the ideal 3 + 2/log2(3) + 1/2
    (
        "[9] > [1] > [2] > [3]",
        ["9", "1", "2", "3"],
        (3 / math.log2(3) + 1 + 1 / math.log2(5)) / (3 + 2 / math.log2(3) + 0.5),
    ),
    # a repeated id counts at its first place: the run is 2, 1, 3
    ("2 > 1 > 2 > 3 > 1", ["2", "1", "3"], (2 + 3 / math.log2(3) + 0.5) / (3 + 2 / math.log2(3) + 0.5)),
    # ten unknown ids push every labelled one below rank 10
    (" > ".join(str(i) for i in range(10, 20)) + " > 1 > 2", [str(i) for i in range(10, 20)] + ["1", "2"], 0.0),
    # the longest chain is the ranking; brackets, colons and "ID" are dropped
    ("Ranking: [ID: 3] then ID: 4 > ID: 1 > ID: 7", ["4", "1", "7"], (3 / math.log2(3)) / (3 + 2 / math.log2(3) + 0.5)),
    ("no ranking here", [], 0.0),
]


@pytest.mark.parametrize("output, run, value", NDCG_TABLE)
def test_ndcg_at_10_as_helmet_computes_it(output, run, value):
    assert metrics.parse_ranking(output) == run
    assert helmet_ndcg_at_10(run, NDCG_QRELS) == pytest.approx(value)  # the written-out definition agrees
    assert metrics.ndcg_at_10(output, NDCG_QRELS) == pytest.approx(value)


def test_process_results_adds_footprint_only_when_present():
    doc = {"metric": "ruler_recall", "answers": ["11", "22"], "qrels": [], "task": "t"}
    assert process_results(doc, ["11 and 33"]) == {"ruler_recall": 0.5, "score": 0.5}

    class Response(str):
        footprint = {"kv_footprint": 0.25, "kv_peak": 0.5, "kv_peak_bytes": 10, "kv_entries": 3, "tokens": 9}

    out = process_results(doc, [Response("11 22")])
    assert out == {"ruler_recall": 1.0, "score": 1.0, "kv_footprint": 0.25, "kv_peak": 0.5}
    rerank = {"metric": "ndcg_at_10", "answers": ["1 > 2"], "qrels": ["1:1", "2:0"], "task": "t"}
    assert process_results(rerank, ["2 > 1"])["ndcg_at_10"] == pytest.approx(0.6309298)
