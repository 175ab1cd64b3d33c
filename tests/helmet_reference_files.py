"""Deterministic generator of small HELMET-format input files (reference fixtures for kvbench tests).

`write_all(root)` writes, under `root`, files laid out like HELMET's `data/` folder (same relative
paths as HELMET's 128K configs) plus the ICL datasets that HELMET itself pulls from the Hub:

  kilt/nq-dev-multikilt_1000_k1000_dep6.jsonl          180 rows, NO "id" field (key is the question), 10 repeated questions
  kilt/nq-train-multikilt_1000_k3_dep6.jsonl           200 rows, NO "id", 12 repeated questions      (demo pool)
  kilt/triviaqa-dev-multikilt_1000_k1000_dep6.jsonl    200 rows, string ids "tc_NNNN", 10 repeated ids
  kilt/triviaqa-train-multikilt_1000_k3_dep6.jsonl     200 rows, 10 repeated ids                      (demo pool)
  kilt/hotpotqa-dev-multikilt_1000_k1000_dep3.jsonl    150 rows, 24-hex string ids, 8 repeated ids
  kilt/hotpotqa-train-multikilt_1000_k3_dep3.jsonl     160 rows, 8 repeated ids                       (demo pool)
  kilt/popqa_test_1000_k1000_dep6.jsonl                260 rows, INTEGER ids, "s_pop" (some >= 1000, some == 1000), 10 repeated ids
  kilt/popqa_test_1000_k3_dep6.jsonl                   the same 260 questions/ids/s_pop in the same order, other ctxs (demo pool)
  msmarco/test_reranking_data_k1000_dep3.jsonl         150 rows, numeric-string qids, 6 repeated qids
  msmarco/test_reranking_data_k10_dep3.jsonl           148 rows: each test qid once (shuffled) + 4 repeats (demo pool, small)
  msmarco/test_reranking_data_k10_dep3_big.jsonl       270 rows: test qids + 120 other qids + repeats (demo pool, > 2x samples)
  json_kv/test_k1800_dep6.jsonl                        160 rows: context/question/answer/demos/num_kvs
  ruler/niah_multikey_2/validation_131072.jsonl        150 rows: index/input/outputs/length/context/query/type_needle_v
  ruler/niah_multikey_3/validation_131072.jsonl        200 rows
  ruler/niah_multivalue/validation_131072.jsonl        100 rows (exactly max_test_samples: HELMET keeps all, permuted)
  icl/<name>/train.jsonl, icl/<name>/test.jsonl        fields text, label (int class id); name in
                                                       trec_coarse, trec_fine, banking77, clinic150, nlu
  icl/<name>/labels.json                               the ClassLabel names list (length = HELMET's num_labels)
  icl/nlu/all.jsonl                                    the single Hub split of the NLU dataset (text, label); HELMET
                                                       splits it itself with train_test_split(test_size=0.1, seed=42);
                                                       icl/nlu/{train,test}.jsonl are that split, in its (permuted) order.

trec_coarse and trec_fine share rows (as on the Hub, where one CogComp/trec row has both a coarse and a
fine label): line i of icl/trec_coarse/*.jsonl and icl/trec_fine/*.jsonl is the same text.

Every row carries a tag inside its text (e.g. "[nq-dev#17]" in the first passage, "[b77-train#5]" in an
ICL text) so a rendered prompt can be traced back to the exact file line, even among repeated keys.
Only the Python standard library is used, apart from NumPy for the NLU split (which must mirror
`datasets.Dataset.train_test_split`: `numpy.random.default_rng(seed).permutation(n)`, the first
ceil(0.1 n) positions are the test split, the rest the train split, both in permuted order).
"""

from __future__ import annotations

import json
import math
import os
import random
import zlib

WORDS = (
    "river lantern copper meadow falcon harbor velvet quartz ember orchard glacier pepper saddle timber "
    "marble thistle canyon beacon willow cobalt prairie summit anchor violet cedar lagoon ivory spindle "
    "tundra crimson hollow maple raven sable tidal walnut zephyr bramble cinder dune fern garnet heron "
    "juniper kestrel lotus mosaic nectar onyx pebble quill rustic sierra topaz umber vessel wren yarrow"
).split()

HEX = "0123456789abcdef"


def _rng(name: str) -> random.Random:
    return random.Random(zlib.crc32(name.encode("utf-8")))


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _write_jsonl(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _unique(rng: random.Random, make, seen: set):
    while True:
        value = make(rng)
        if value not in seen:
            seen.add(value)
            return value


def _with_repeats(rng: random.Random, base: list, n_repeat: int) -> list[int]:
    """Positions (into base) for a file of len(base)+n_repeat rows: every base row once, plus n_repeat
    repeated base rows inserted after their first occurrence, so a key appears twice in the file."""
    order = list(range(len(base)))
    for src in rng.sample(range(len(base) - 1), n_repeat):
        at = rng.randint(order.index(src) + 1, len(order))
        order.insert(at, src)
    return order


# ------------------------------------------------------------------------------------------------ KILT (RAG)


def _kilt_file(
    tag: str,
    rng: random.Random,
    keys: list,
    questions: list[str],
    n_ctx: int,
    order: list[int],
    with_id: bool,
    s_pop: list[int] | None = None,
) -> list[dict]:
    rows = []
    for line, b in enumerate(order):
        ctxs = []
        for j in range(n_ctx):
            text = _words(rng, 12)
            if j == 0:
                text = f"[{tag}#{line}] " + text
            ctxs.append(
                {"id": f"{tag}-p{line}-{j}", "title": _words(rng, 2).title(), "text": text, "has_answer": j == 0}
            )
        row = {}
        if with_id:
            row["id"] = keys[b]
        row["question"] = questions[b]
        row["answers"] = [_words(rng, 2), _words(rng, 1)]
        row["ctxs"] = ctxs
        if s_pop is not None:
            row["s_pop"] = s_pop[b]
        rows.append(row)
    return rows


def _questions(rng: random.Random, n: int, seen: set) -> list[str]:
    starts = ["who", "what", "when", "where", "which", "how many", "why"]
    return [_unique(rng, lambda r: f"{r.choice(starts)} {_words(r, r.randint(3, 6))}?", seen) for _ in range(n)]


def _kilt(root: str) -> None:
    kdir = os.path.join(root, "kilt")
    # nq: no id field, questions are the key
    rng = _rng("nq")
    seen: set = set()
    for split, n_base, n_rep, k, tag in (("dev", 170, 10, 4, "nq-dev"), ("train", 188, 12, 3, "nq-train")):
        qs = _questions(rng, n_base, seen)
        order = _with_repeats(rng, qs, n_rep)
        name = f"nq-{split}-multikilt_1000_k{1000 if split == 'dev' else 3}_dep6.jsonl"
        _write_jsonl(os.path.join(kdir, name), _kilt_file(tag, rng, qs, qs, k, order, with_id=False))
    # triviaqa: string ids like "tc_1234"
    rng = _rng("triviaqa")
    seen_ids: set = set()
    seen = set()
    for split, n_base, n_rep, k, tag in (("dev", 190, 10, 4, "tqa-dev"), ("train", 190, 10, 3, "tqa-train")):
        ids = [
            _unique(rng, lambda r: f"{r.choice(['tc', 'qw', 'qb', 'wh'])}_{r.randint(1, 9999)}", seen_ids)
            for _ in range(n_base)
        ]
        qs = _questions(rng, n_base, seen)
        order = _with_repeats(rng, ids, n_rep)
        name = f"triviaqa-{split}-multikilt_1000_k{1000 if split == 'dev' else 3}_dep6.jsonl"
        _write_jsonl(os.path.join(kdir, name), _kilt_file(tag, rng, ids, qs, k, order, with_id=True))
    # hotpotqa: 24-hex ids
    rng = _rng("hotpotqa")
    seen_ids, seen = set(), set()
    for split, n_base, n_rep, k, tag in (("dev", 142, 8, 4, "hqa-dev"), ("train", 152, 8, 3, "hqa-train")):
        ids = [
            _unique(rng, lambda r: "5a" + "".join(r.choice(HEX) for _ in range(22)), seen_ids) for _ in range(n_base)
        ]
        qs = _questions(rng, n_base, seen)
        order = _with_repeats(rng, ids, n_rep)
        name = f"hotpotqa-{split}-multikilt_1000_k{1000 if split == 'dev' else 3}_dep3.jsonl"
        _write_jsonl(os.path.join(kdir, name), _kilt_file(tag, rng, ids, qs, k, order, with_id=True))
    # popqa: integer ids, s_pop; the demo file holds the same questions (one split only)
    rng = _rng("popqa")
    n_base = 250
    seen_ids = set()
    ids = [_unique(rng, lambda r: r.randint(0, 15000), seen_ids) for _ in range(n_base)]
    qs = _questions(rng, n_base, set())
    pops = [rng.choice([1, 3, 12, 40, 150, 300, 720, 999, 1000, 1001, 4000, 25000, 250000]) for _ in range(n_base)]
    order = _with_repeats(rng, ids, 10)
    _write_jsonl(
        os.path.join(kdir, "popqa_test_1000_k1000_dep6.jsonl"),
        _kilt_file("popqa-k1000", rng, ids, qs, 4, order, with_id=True, s_pop=pops),
    )
    _write_jsonl(
        os.path.join(kdir, "popqa_test_1000_k3_dep6.jsonl"),
        _kilt_file("popqa-k3", rng, ids, qs, 3, order, with_id=True, s_pop=pops),
    )


# ------------------------------------------------------------------------------------------------ MS MARCO


def _msmarco(root: str) -> None:
    mdir = os.path.join(root, "msmarco")
    rng = _rng("msmarco")
    seen: set = set()
    qids = [
        _unique(rng, lambda r: str(r.choice([r.randint(1000, 99999), r.randint(100000, 1200000)])), seen)
        for _ in range(264)
    ]
    queries = {q: _words(rng, rng.randint(3, 7)) for q in qids}
    pid_counter = [7000000]

    def rows_for(tag: str, order: list[str], k: int) -> list[dict]:
        rows = []
        for line, qid in enumerate(order):
            ctxs = []
            for j in range(k):
                pid_counter[0] += rng.randint(1, 50)
                text = _words(rng, 10)
                if j == 0:
                    text = f"[{tag}#{line}] " + text
                ctxs.append(
                    {"id": str(pid_counter[0]), "title": "", "text": text, "label": rng.choice([0, 0, 0, 1, 2, 3])}
                )
            rows.append({"qid": qid, "query": queries[qid], "ctxs": ctxs})
        return rows

    test_q = qids[:144]
    test_order = [test_q[i] for i in _with_repeats(rng, test_q, 6)]
    _write_jsonl(os.path.join(mdir, "test_reranking_data_k1000_dep3.jsonl"), rows_for("ms-test", test_order, 6))
    small = test_q[:]
    rng.shuffle(small)
    small_order = [small[i] for i in _with_repeats(rng, small, 4)]
    _write_jsonl(os.path.join(mdir, "test_reranking_data_k10_dep3.jsonl"), rows_for("ms-demo", small_order, 4))
    big = qids[:]
    rng.shuffle(big)
    big_order = [big[i] for i in _with_repeats(rng, big, 6)]
    _write_jsonl(os.path.join(mdir, "test_reranking_data_k10_dep3_big.jsonl"), rows_for("ms-bigdemo", big_order, 4))


# ------------------------------------------------------------------------------------------------ recall


def _uuid(rng: random.Random) -> str:
    h = "".join(rng.choice(HEX) for _ in range(32))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _json_kv(root: str) -> None:
    rng = _rng("json_kv")
    rows = []
    for _ in range(160):
        kvs = [(_uuid(rng), _uuid(rng)) for _ in range(8)]
        target = rng.randrange(len(kvs))
        demos = [[_uuid(rng), _uuid(rng)] for _ in range(4)]
        rows.append(
            {
                "context": "JSON data:\n" + json.dumps(dict(kvs), indent=1),
                "question": kvs[target][0],
                "answer": kvs[target][1],
                "demos": demos,
                "num_kvs": len(kvs),
            }
        )
    _write_jsonl(os.path.join(root, "json_kv", "test_k1800_dep6.jsonl"), rows)


def _ruler(root: str) -> None:
    specs = (
        ("niah_multikey_2", 150, "numbers", 1),
        ("niah_multikey_3", 200, "uuids", 1),
        ("niah_multivalue", 100, "numbers", 4),
    )
    for folder, n, vtype, n_vals in specs:
        rng = _rng("ruler-" + folder)
        rows = []
        for index in range(n):
            query = f"{_words(rng, 1)}-{rng.choice(WORDS)}-{index}"
            values = [_uuid(rng) if vtype == "uuids" else str(rng.randint(1000000, 9999999)) for _ in range(n_vals)]
            needles = " ".join(f"One of the special magic {vtype} for {query} is: {v}." for v in values)
            context = _words(rng, 20) + " " + needles + " " + _words(rng, 20)
            rows.append(
                {
                    "index": index,
                    "input": f"[{folder}#{index}] {context}",
                    "outputs": values,
                    "length": 131072 - rng.randint(0, 500),
                    "context": context,
                    "query": query,
                    "type_needle_v": vtype,
                }
            )
        _write_jsonl(os.path.join(root, "ruler", folder, "validation_131072.jsonl"), rows)


# ------------------------------------------------------------------------------------------------ ICL

ICL_NUM_LABELS = {"trec_coarse": 6, "trec_fine": 50, "banking77": 77, "clinic150": 151, "nlu": 68}
TREC_COARSE_NAMES = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
# fine label id -> coarse label id, for the 20 fine labels used (ids are valid CogComp/trec fine ids)
TREC_FINE_TO_COARSE = {
    0: 0,
    1: 0,
    2: 1,
    5: 1,
    9: 1,
    14: 1,
    22: 2,
    23: 2,
    24: 2,
    28: 3,
    29: 3,
    30: 3,
    32: 4,
    33: 4,
    34: 4,
    35: 4,
    38: 5,
    39: 5,
    41: 5,
    42: 5,
}
# test rows per fine label (600 in all): coarse ABBR has 50 (< 84 rounds), ENTY exactly 84
TREC_FINE_TEST = {
    0: 10,
    1: 40,
    2: 25,
    5: 30,
    9: 14,
    14: 15,
    22: 40,
    23: 40,
    24: 40,
    28: 35,
    29: 35,
    30: 36,
    32: 30,
    33: 30,
    34: 30,
    35: 30,
    38: 30,
    39: 30,
    41: 30,
    42: 30,
}
# train rows per fine label (300 in all): coarse ABBR has 3 (< 4 rounds at 24 shots); fine 0 has 1, fine 1 has 2
TREC_FINE_TRAIN = {
    0: 1,
    1: 2,
    2: 19,
    5: 16,
    9: 17,
    14: 15,
    22: 18,
    23: 17,
    24: 16,
    28: 17,
    29: 18,
    30: 16,
    32: 17,
    33: 16,
    34: 18,
    35: 17,
    38: 16,
    39: 15,
    41: 14,
    42: 15,
}


def _counts_rows(rng: random.Random, counts: dict[int, int]) -> list[int]:
    labels = [lab for lab, c in counts.items() for _ in range(c)]
    rng.shuffle(labels)
    return labels


def _spread(rng: random.Random, labels: list[int], total: int, fixed: dict[int, int]) -> dict[int, int]:
    """Counts per label summing to total: fixed ones as given, the rest near-even with jitter."""
    free = [lab for lab in labels if lab not in fixed]
    left = total - sum(fixed.values())
    counts = dict(fixed)
    base = left // len(free)
    for lab in free:
        counts[lab] = base
    for _ in range(left - base * len(free)):
        counts[rng.choice(free)] += 1
    for _ in range(len(free)):  # jitter, keeping the sum
        a, b = rng.sample(free, 2)
        d = rng.randint(0, 3)
        if counts[a] - d >= max(8, base // 2):
            counts[a] -= d
            counts[b] += d
    return {lab: counts[lab] for lab in labels}


def _icl_texts(rng: random.Random, tag: str, n: int) -> list[str]:
    starts = ["please", "how do i", "can you", "i want to", "why is", "what is", "tell me"]
    return [f"{rng.choice(starts)} {_words(rng, rng.randint(3, 8))} [{tag}#{i}]" for i in range(n)]


def _icl(root: str) -> None:
    idir = os.path.join(root, "icl")

    def dump(name: str, split: str, texts: list[str], labels: list[int]) -> None:
        _write_jsonl(
            os.path.join(idir, name, f"{split}.jsonl"),
            [{"text": t, "label": int(lab)} for t, lab in zip(texts, labels)],
        )

    def names(name: str, prefix: str) -> None:
        os.makedirs(os.path.join(idir, name), exist_ok=True)
        with open(os.path.join(idir, name, "labels.json"), "w") as f:
            json.dump([f"{prefix}_{i:03d}" for i in range(ICL_NUM_LABELS[name])] if prefix else TREC_COARSE_NAMES, f)

    # trec: one set of rows with a fine and a coarse label each
    rng = _rng("trec")
    for split, counts in (("train", TREC_FINE_TRAIN), ("test", TREC_FINE_TEST)):
        fine = _counts_rows(rng, counts)
        texts = _icl_texts(rng, f"trec-{split}", len(fine))
        dump("trec_fine", split, texts, fine)
        dump("trec_coarse", split, texts, [TREC_FINE_TO_COARSE[f] for f in fine])
    names("trec_coarse", None)
    names("trec_fine", "FINE")

    # banking77: 16 labels; train 250 with labels of 2, 3 and 4 rows (< or = 4 rounds at 50 shots);
    # test 600 with labels of 20 (< 32 rounds), 32 (= rounds) and 64 rows
    rng = _rng("banking77")
    labs = sorted(rng.sample(range(77), 16))
    rng.shuffle(labs)
    train = _spread(rng, labs, 250, {labs[0]: 2, labs[1]: 3, labs[2]: 4})
    test = _spread(rng, labs, 600, {labs[3]: 20, labs[4]: 32, labs[5]: 64})
    for split, counts in (("train", train), ("test", test)):
        y = _counts_rows(rng, counts)
        dump("banking77", split, _icl_texts(rng, f"b77-{split}", len(y)), y)
    names("banking77", "B77")

    # clinic150 (clinc_oos "plus"; test = validation split): 20 labels; train 300 with a label of 1 row
    # (< 3 rounds at 45 shots); test 600 with a label of 12 rows (< 25 rounds) and one of exactly 25
    rng = _rng("clinic150")
    labs = sorted(rng.sample(range(151), 20))
    rng.shuffle(labs)
    train = _spread(rng, labs, 300, {labs[0]: 1, labs[1]: 3})
    test = _spread(rng, labs, 600, {labs[2]: 12, labs[3]: 25})
    for split, counts in (("train", train), ("test", test)):
        y = _counts_rows(rng, counts)
        dump("clinic150", split, _icl_texts(rng, f"cl150-{split}", len(y)), y)
    names("clinic150", "INTENT")

    # nlu: one Hub split of 5200 rows over 18 labels (one rare label), split 10% test with seed 42
    rng = _rng("nlu")
    labs = sorted(rng.sample(range(68), 18))
    rng.shuffle(labs)
    counts = _spread(rng, labs, 5200, {labs[0]: 60, labs[1]: 290})
    y = _counts_rows(rng, counts)
    texts = _icl_texts(rng, "nlu", len(y))
    _write_jsonl(os.path.join(idir, "nlu", "all.jsonl"), [{"text": t, "label": lab} for t, lab in zip(texts, y)])
    import numpy as np  # the split must mirror datasets.Dataset.train_test_split(test_size=0.1, seed=42)

    perm = np.random.default_rng(42).permutation(len(y))
    n_test = math.ceil(0.1 * len(y))
    for split, idx in (("test", perm[:n_test]), ("train", perm[n_test:])):
        dump("nlu", split, [texts[i] for i in idx], [y[i] for i in idx])
    names("nlu", "NLU")


def write_all(root: str) -> None:
    """Write every fixture file under root (the equivalent of HELMET's data/ folder)."""
    _kilt(root)
    _msmarco(root)
    _json_kv(root)
    _ruler(root)
    _icl(root)


if __name__ == "__main__":
    import sys

    write_all(sys.argv[1] if len(sys.argv) > 1 else "fixtures")
