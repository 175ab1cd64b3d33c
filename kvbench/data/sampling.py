"""Which samples and demonstrations a HELMET task evaluates, drawn exactly as HELMET draws them.

HELMET re-seeds Python's generator with its seed before each task, and its loaders then draw with that
generator, with `datasets.Dataset.shuffle(seed)` (a NumPy PCG64 permutation of the rows) and with seeds
derived from a sample's key by SHA-256. The same draws on the same files give the same samples, demos and
order, so a kvbench run evaluates what HELMET evaluates. Rows are handled as (line, row): the line in its
file is the identifier every sample's log carries.

Checked against HELMET's own loaders on small files (tests/data/helmet_draws/, with how they were made).
"""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np

Row = tuple[int, dict]  # (line in its file, the row)
# HELMET fixes the number of labels per ICL dataset (the labels a mapping shuffles), whatever the data holds.
ICL_NUM_LABELS = {"trec_coarse": 6, "trec_fine": 50, "banking77": 77, "clinic150": 151, "clinc150": 151, "nlu": 68}


def permutation(seed: int, n: int) -> list[int]:
    """The row order `datasets.Dataset.shuffle(seed=seed)` gives: new position i holds old row perm[i]."""
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def sha256_int(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16)


def numbered(rows: list[dict]) -> list[Row]:
    return list(enumerate(rows))


def shuffled_head(rows: list[Row], n: int, seed: int) -> list[Row]:
    """Recall (JSON KV, RULER): the rows permuted with the seed, the first n kept in that order."""
    return [rows[i] for i in permutation(seed, len(rows))[:n]]


def drawn_by_key(rows: list[Row], key: str, n: int, seed: int) -> list[Row]:
    """RAG and re-rank: n distinct keys drawn from the sorted keys by a generator seeded with `seed`; every row
    whose key was drawn is kept, in file order (a repeated key keeps all its rows, so there may be more than n)."""
    keys = sorted({row[key] for _, row in rows})  # each key type sorts its own way: "10" < "9", 9 < 10
    chosen = set(random.Random(seed).sample(keys, min(n, len(keys))))
    return [(line, row) for line, row in rows if row[key] in chosen]


def first_distinct(pool: list[Row], seed: int, key: str, k: int) -> list[Row]:
    """The pool permuted with `seed`; the first row of each distinct key, until k rows are held."""
    seen, out = set(), []
    for i in permutation(seed, len(pool)):
        line, row = pool[i]
        if row[key] in seen:
            continue
        seen.add(row[key])
        out.append((line, row))
        if len(out) == k:
            break
    return out


def rag_draw(
    test: list[Row], demos: list[Row], n: int, shots: int, seed: int, exclude_own: bool
) -> list[tuple[Row, list[Row]]]:
    """RAG: (sample, its demos). The key is `id` when the rows have one, else the question. Demos are the
    demo file permuted by the key's SHA-256; `exclude_own` (PopQA, whose demos come from its test set) first
    removes the sample's own key from the pool."""
    key = "id" if test and "id" in test[0][1] else "question"
    drawn = []
    for line, row in drawn_by_key(test, key, n, seed):
        pool = [d for d in demos if d[1][key] != row[key]] if exclude_own else demos
        chosen = first_distinct(pool, sha256_int(str(row[key])) % 2**31, key, shots) if shots else []
        drawn.append(((line, row), chosen))
    return drawn


def rerank_draw(test: list[Row], demos: list[Row], n: int, shots: int, seed: int) -> list[tuple[Row, list[Row]]]:
    """Re-rank: samples by query id as RAG. A demo file more than twice the samples loses every sample's query
    once; otherwise each sample's own query is removed from the pool for it alone."""
    samples = drawn_by_key(test, "qid", n, seed)
    prefiltered = len(demos) > 2 * len(samples)
    if prefiltered:
        taken = {row["qid"] for _, row in samples}
        demos = [d for d in demos if d[1]["qid"] not in taken]
    drawn = []
    for line, row in samples:
        pool = demos if prefiltered else [d for d in demos if d[1]["qid"] != row["qid"]]
        chosen = first_distinct(pool, abs(sha256_int(row["qid"]) % 2**31), "qid", shots) if shots else []
        drawn.append(((line, row), chosen))
    return drawn


def balanced(rows: list[Row], k: int, rng: random.Random) -> list[Row]:
    """k rows in rounds that hold every label once (HELMET's balance_labels).

    Labels in order of first appearance; R = ceil(k / labels) rounds. Each label of m rows draws
    `rng.sample(range(m), R mod m)` positions, then whole draws of min(R - held, m) until it holds R
    (rows repeat when R > m); position i goes to round i. Each round is shuffled, the rounds joined and cut to k.
    """
    groups: dict = {}
    for line, row in rows:
        groups.setdefault(int(row["label"]), []).append((line, row))
    rounds = math.ceil(k / len(groups))
    table: list[list[Row]] = [[] for _ in range(rounds)]
    for members in groups.values():
        m = len(members)
        picks = rng.sample(range(m), rounds % m)
        while len(picks) < rounds:
            picks += rng.sample(range(m), min(rounds - len(picks), m))
        for round_, pick in zip(table, picks):
            round_.append(members[pick])
    for round_ in table:
        rng.shuffle(round_)
    return [row for round_ in table for row in round_][:k]


def icl_draw(
    train: list[Row], test: list[Row], num_labels: int, shots: int, n: int, seed: int
) -> list[tuple[Row, list[Row], list[int]]]:
    """ICL: (test sample, its demos, its label mapping). A test split larger than n is permuted with the seed and
    balanced to n (rows may repeat); a smaller one is taken whole, in order. Per sample, the seed
    (SHA-256(text) + seed) mod 2^31 draws the balanced demos from the train split, in its order, and shuffles the
    labels 0..num_labels-1 (label y is shown as mapping[y])."""
    if len(test) > n:
        test = balanced(shuffled_head(test, len(test), seed), n, random.Random(seed))
    drawn = []
    for line, row in test:
        local = (sha256_int(row["text"]) + seed) % 2**31
        demos = balanced(train, shots, random.Random(local))
        mapping = list(range(num_labels))
        random.Random(local).shuffle(mapping)
        drawn.append(((line, row), demos, mapping))
    return drawn
