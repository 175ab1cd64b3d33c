"""Build kvbench-tiny: a 2-layer Llama (GQA, RoPE) whose weights are set by construction, and its tokenizer.

    python -m kvbench.tiny.build [--out DIR]        # seconds on a laptop CPU; deterministic

Why constructed, not trained: on 2 CPU cores a small transformer trained on key->value lookup sits at
chance for thousands of steps before the induction circuit forms. Here the circuit is written down
instead, in a standard checkpoint that transformers and kvbench run like any other model:

  layer 0  "offset" heads: RoPE phases make head h attend to the token exactly `delta_h` back and copy
           its features (letter, marker word, attribute, topic class) into a slot of the residual
           stream; one "window" head averages the topic classes of the last ~15 tokens (ICL); one "gather"
           head averages the words and ID chunks of the last ~36 tokens (re-rank: the query, and the IDs
           already ranked).
  layer 1  retrieval heads: a query built from the question's slots is matched against every earlier
           position's slots (content only: low-frequency RoPE pairs barely rotate), and the matched
           position's token is copied to the output. When nothing matches fully, a head attends to
           the first token (BOS, the attention sink) whose value is zero, and a constant logit makes
           the model end the answer with a newline. Re-rank: two heads score every document's last word
           by the query words its bag holds, minus the already-ranked ID chunks it holds, and copy the
           best document's ID chunk by chunk (see the re-rank section below).

So an answer exists only if the cache still holds the fact's entries in layer 1: exactly what
KV-eviction methods are judged on. Residual stream layout, one named slice per feature, is in LAYOUT.
The residual carries one huge constant coordinate, so every RMSNorm divides by (almost) the same number
and the construction stays linear.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from kvbench.data.synth import ATTRIBUTES, WORDS

HERE = Path(__file__).resolve().parent
SEED = 0  # nothing is random today; seeded so that any future random part stays reproducible
HEAD_DIM = 256
NUM_HEADS = 10  # two KV groups of five query heads (GQA)
NUM_KV_HEADS = 2
ROPE_THETA = 1e16  # pair i turns by theta_i = 1e16 ** (-i/128) per token: 1 rad for i=0 ... 1e-16 rad
POSITIONAL_PAIRS = 48  # pairs 0..47 (theta >= 1.3e-6) shape positions; pairs 48.. carry content
MAX_CONTEXT = 16384  # what the positional kernels are designed for
BIG = 1000.0  # the constant coordinate: RMSNorm then divides every position by ~BIG/sqrt(d)
BETA = 24.0  # logit per matched feature in retrieval heads

# --- tokenizer -------------------------------------------------------------------------------------------

TEMPLATE_WORDS = (
    "Find the value of key in list below Key Value Use given documents to answer question Document is "
    "Question what Answer Rank by how many words query they contain most first Write IDs relevant "
    "this format Ranking ID Query provided mapping from text label assign Only output and nothing "
    "else"
).split()
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
NUMBERS = [str(i) for i in range(10)] + [f"{i:02d}" for i in range(100)]  # numbers split in 2-digit chunks
# Tokens whose presence at an offset is a condition (">" and "Ranking": where a ranked ID's chunks go).
MARKERS = [" ", ":", "\n", "is", "Value", "Answer", "label", ">", "Ranking"]
SPECIALS = ["<unk>", "<s>", "</s>"]


def vocabulary() -> list[str]:
    words = sorted(set(TEMPLATE_WORDS) | set(WORDS) | set(ATTRIBUTES))
    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    vocab: list[str] = []
    for token in SPECIALS + chars + NUMBERS + words:
        if token not in vocab:
            vocab.append(token)
    return vocab


def build_tokenizer():
    """Word-level: known words whole, any other letter run letter by letter, digits in chunks of two."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(vocabulary())}
    words = sorted((t for t in vocab if len(t) > 1 and t.isalpha()), key=lambda w: (-len(w), w))
    # A known word only counts when no letter touches it, so a key like "bcat" stays four letters.
    pattern = "(?<![A-Za-z])(?:" + "|".join(words) + r")(?![A-Za-z])|[0-9]{1,2}|\n|."
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


# --- residual stream layout ------------------------------------------------------------------------------

CLASSES = list(ATTRIBUTES)  # ICL class c owns the six words of attribute c
TOPIC_CLASS = {w: c for c, ws in enumerate(ATTRIBUTES.values()) for w in ws}
NUM_FEATURES = 22  # tens digit (10), units digit (10), two-digit flag, one-digit flag
CHUNKS = 100  # a two-digit token "00".."99" also has a one-hot identity (re-rank IDs are two such chunks)


def _layout(spec: list[tuple[str, int]]) -> dict[str, slice]:
    out, start = {}, 0
    for name, size in spec:
        out[name] = slice(start, start + size)
        start += size
    out["_size"] = start
    return out


# Token features from the embedding, slots written by layer 0, and OUT read by the unembedding.
LAYOUT = _layout(
    [
        ("const", 1),
        ("bos", 1),
        ("letter", 26),
        ("marker", len(MARKERS)),
        ("word", len(WORDS)),
        ("attr", len(CLASSES)),
        ("topic_class", len(CLASSES)),
        ("topic", 1),
        ("num", NUM_FEATURES),
        ("is_num", 1),
        ("is_word", 1),
        ("m1", len(MARKERS)),
        ("m2", len(MARKERS)),
        ("m3", len(MARKERS)),
        ("l3", 26),
        ("l4", 26),
        ("l5", 26),
        ("l6", 26),
        ("l7", 26),
        ("a11", len(CLASSES)),
        ("window_class", len(CLASSES)),
        ("out_num", NUM_FEATURES),
        ("out_word", len(WORDS)),
        ("out_newline", 1),
        # Re-rank. "chunk": a two-digit token's own identity (embedding); after layer 0, at a document's last
        # word, its ID's two chunks, and at a ranking position, the chunks of the IDs already written. "id_hi":
        # the number features of the document ID's first chunk, at the document's last word. The "word" slot
        # doubles as a bag of words: a document's four words at its last word, the query's words while ranking.
        ("chunk", CHUNKS),
        ("id_hi", NUM_FEATURES),
    ]
)
HIDDEN = 490  # a multiple of NUM_HEADS (transformers checks); 25 MB of float32 with 10 heads of 256
assert LAYOUT["_size"] <= HIDDEN

# What a layer-0 offset head copies: these features of the token `delta` back (one value vector for all).
COPIED = ["letter", "marker", "attr", "topic_class", "word", "chunk", "num"]
OFFSET_HEADS = {
    1: {"marker": "m1", "chunk": "chunk"},
    2: {"marker": "m2", "word": "word"},
    3: {"marker": "m3", "letter": "l3", "chunk": "chunk", "num": "id_hi"},
    4: {"letter": "l4", "word": "word"},
    5: {"letter": "l5"},
    6: {"letter": "l6", "word": "word"},
    7: {"letter": "l7"},
    11: {"attr": "a11"},
}
# Re-rank documents are "[ID: 12 34] Document: w1 w2 w3 w4": from w4, the words sit 2, 4 and 6 back (heads 2,
# 4, 6 add them to w4's own word: its bag) and the ID's chunks 12 and 13 back. At a word token heads 1 and 3
# look 12 and 13 back instead of 1 and 3 (what they write at word tokens is read by no other task's lookup).
AT_WORDS = {1: 12, 3: 13}
WINDOW = (3, 17)  # ICL: a demo's text is 13 tokens, ending 4 before its label and 2 before the question's end
# Re-rank's gather head averages the words and two-digit numbers 0-36 tokens back: while ranking, the query's
# three words (3-7 back from "Ranking:") and the IDs written so far (3 tokens each). The task's restated
# instruction keeps the last document 84 tokens back from "Ranking:"; beyond 80 the kernel is 10 logits down.
GATHER = (36, 80)  # (last distance inside, first distance outside)


def num_features(token: str) -> np.ndarray:
    f = np.zeros(NUM_FEATURES)
    if len(token) == 2:
        f[int(token[0])] = f[10 + int(token[1])] = f[20] = 1
    else:
        f[10 + int(token)] = f[21] = 1
    return f


def token_features(token: str) -> np.ndarray:
    x = np.zeros(HIDDEN)
    x[LAYOUT["const"]] = BIG
    if token == "<s>":
        x[LAYOUT["bos"]] = 1
    if token in LETTERS:
        x[LAYOUT["letter"].start + LETTERS.index(token)] = 1
    if token in MARKERS:
        x[LAYOUT["marker"].start + MARKERS.index(token)] = 1
    if token in WORDS:
        x[LAYOUT["word"].start + WORDS.index(token)] = 1
        x[LAYOUT["is_word"]] = 1
    if token in CLASSES:
        x[LAYOUT["attr"].start + CLASSES.index(token)] = 1
    if token in TOPIC_CLASS:
        x[LAYOUT["topic_class"].start + TOPIC_CLASS[token]] = 1
        x[LAYOUT["topic"]] = 1
    if token in NUMBERS:
        x[LAYOUT["num"]] = num_features(token)
        x[LAYOUT["is_num"]] = 1
        if len(token) == 2:
            x[LAYOUT["chunk"].start + int(token)] = 1
    return x


# --- RoPE kernels ----------------------------------------------------------------------------------------


def thetas() -> np.ndarray:
    return ROPE_THETA ** (-np.arange(0, HEAD_DIM, 2) / HEAD_DIM)


def kernel_amplitudes(inside: int, horizon: int = MAX_CONTEXT) -> tuple[np.ndarray, float, float]:
    """Non-negative amplitudes A_i on the positional pairs so that S(d) = sum_i A_i cos(theta_i d) is at least
    `lo` for |d| <= inside and at most `lo - gap` for inside < |d| <= horizon, with the largest gap (an LP)."""
    from scipy.optimize import linprog

    theta = thetas()[:POSITIONAL_PAIRS]
    d_in, d_out = np.arange(0, inside + 1), np.arange(inside + 1, horizon + 1)
    c_in, c_out = np.cos(np.outer(d_in, theta)), np.cos(np.outer(d_out, theta))
    n = len(theta)  # variables: A (n), lo, gap; maximise gap
    cost = np.zeros(n + 2)
    cost[-1] = -1
    rows = [
        np.hstack([-c_in, np.ones((len(d_in), 1)), np.zeros((len(d_in), 1))]),  # lo - S_in <= 0
        np.hstack([c_out, -np.ones((len(d_out), 1)), np.ones((len(d_out), 1))]),
    ]  # S_out - lo + gap <= 0
    bounds = [(0, None)] * n + [(None, None), (None, None)]
    res = linprog(
        cost,
        A_ub=np.vstack(rows),
        b_ub=np.zeros(len(d_in) + len(d_out)),
        A_eq=np.hstack([np.ones((1, n)), np.zeros((1, 2))]),
        b_eq=[1],
        bounds=bounds,
        method="highs",
    )
    assert res.success, res.message
    amps = res.x[:n]
    spread = float(c_in.dot(amps).max() - c_in.dot(amps).min())
    return amps, float(res.x[-1]), spread


def gather_kernel(inside: int, outside: int, horizon: int = MAX_CONTEXT + 64, ripple: float = 0.01):
    """Amplitudes, centred on inside/2, of a kernel that is flat (within `ripple`) over distances 0..inside and at
    least `gap` below that from `outside` on, up to `horizon` (an LP: the largest gap). Between the two it stays
    below the flat top. Flat, so the gather head weighs the items in its window (nearly) equally."""
    from scipy.optimize import linprog

    theta = thetas()[:POSITIONAL_PAIRS]
    d = np.arange(0, horizon + 1)
    c = np.cos(np.outer(np.abs(d - inside / 2), theta))
    c_in, c_mid, c_out = c[d <= inside], c[(d > inside) & (d < outside)], c[d >= outside]
    n = len(theta)  # variables: A (n), lo, gap; maximise gap
    cost = np.zeros(n + 2)
    cost[-1] = -1

    def rows(block, lo, gap):
        return np.hstack([block, np.full((len(block), 1), lo), np.full((len(block), 1), gap)])

    a_ub = np.vstack([rows(-c_in, 1, 0), rows(c_in, -1, 0), rows(c_mid, -1, 0), rows(c_out, -1, 1)])
    b_ub = np.concatenate([np.zeros(len(c_in)), np.full(len(c_in) + len(c_mid), ripple), np.zeros(len(c_out))])
    res = linprog(
        cost,
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=np.hstack([np.ones((1, n)), np.zeros((1, 2))]),
        b_eq=[1],
        bounds=[(0, None)] * n + [(None, None), (None, None)],
        method="highs",
    )
    assert res.success, res.message
    return res.x[:n], float(res.x[-1]), ripple


def positional_query(amps: np.ndarray, center: float) -> np.ndarray:
    """Query on the rotary dims that, against a constant key, scores sum_i A_i cos(theta_i (distance - center))."""
    theta = thetas()[:POSITIONAL_PAIRS]
    q = np.zeros(HEAD_DIM)
    # HF rotary pairs dims i and i + HEAD_DIM/2; a query phase of -theta*center centres the kernel on `center`.
    q[:POSITIONAL_PAIRS] = amps * np.cos(theta * center)
    q[HEAD_DIM // 2 : HEAD_DIM // 2 + POSITIONAL_PAIRS] = -amps * np.sin(theta * center)
    return q


def content_dims(n: int, first_pair: int = POSITIONAL_PAIRS, slowest_first: bool = False) -> list[int]:
    """Head dims whose RoPE pairs turn by < 1.3e-6 rad per token: for content matching at any distance.
    With first_pair < 48 the list goes on with the slowest positional pairs (pair 38 turns 0.02 rad in 1K tokens);
    slowest_first lists the pairs from 127 down instead of from 48 up."""
    pairs = list(range(POSITIONAL_PAIRS, HEAD_DIM // 2))
    pairs = pairs[::-1] if slowest_first else pairs
    dims = [d for i in pairs for d in (i, i + HEAD_DIM // 2)]
    dims += [d for i in range(POSITIONAL_PAIRS - 1, first_pair - 1, -1) for d in (i, i + HEAD_DIM // 2)]
    assert n <= len(dims), f"{n} content features do not fit in {len(dims)} dims"
    return dims[:n]


# --- weights ---------------------------------------------------------------------------------------------


class Weights:
    """The checkpoint's tensors as numpy arrays, in the residual layout above."""

    def __init__(self, vocab: list[str]):
        d, hd = HIDDEN, HEAD_DIM
        self.vocab = vocab
        self.rms = BIG / np.sqrt(d)  # what every RMSNorm divides by (the constant coordinate dominates)
        self.embed = np.stack([token_features(t) for t in vocab])
        self.layers = [
            {
                "q": np.zeros((NUM_HEADS * hd, d)),
                "k": np.zeros((NUM_KV_HEADS * hd, d)),
                "v": np.zeros((NUM_KV_HEADS * hd, d)),
                "o": np.zeros((d, NUM_HEADS * hd)),
            }
            for _ in range(2)
        ]
        self.lm_head = np.zeros((len(vocab), d))
        self.final_norm = np.zeros(d)

    def read(self, name: str, index: int = 0) -> np.ndarray:
        """A row vector that reads residual feature `name`[index] after RMSNorm (as its raw value)."""
        r = np.zeros(HIDDEN)
        sl = LAYOUT[name]
        r[sl.start + index] = self.rms / (BIG if name == "const" else 1.0)  # the constant reads as 1
        return r

    def q_row(self, layer, head, dim):
        return self.layers[layer]["q"][head * HEAD_DIM + dim]

    def k_row(self, layer, group, dim):
        return self.layers[layer]["k"][group * HEAD_DIM + dim]


def build_weights(vocab: list[str]) -> tuple[Weights, dict]:
    w = Weights(vocab)
    scale = np.sqrt(HEAD_DIM)  # undo sdpa's 1/sqrt(head_dim)
    report = {}

    # Layer 0: every head in both groups sees the same keys (constant, plus a few token flags) and values.
    l0 = w.layers[0]
    # Pair 48 carries the topic flag alone; the gather head's flags use pairs 49 and 50.
    topic_dim, _, word_dim, chunk_dim, bos_dim = content_dims(5)
    copied = [(name, i) for name in COPIED for i in range(LAYOUT[name].stop - LAYOUT[name].start)]
    for g in range(NUM_KV_HEADS):
        for dim in range(POSITIONAL_PAIRS):
            w.k_row(0, g, dim)[:] = w.read("const")
        w.k_row(0, g, topic_dim)[:] = w.read("topic")
        w.k_row(0, g, word_dim)[:] = w.read("is_word")
        w.k_row(0, g, chunk_dim)[:] = w.read("num", 20)  # two-digit flag: a chunk of an ID
        w.k_row(0, g, bos_dim)[:] = w.read("bos")
        for j, (name, i) in enumerate(copied):
            l0["v"][g * HEAD_DIM + j] = w.read(name, i)
    value_index = {feat: j for j, feat in enumerate(copied)}

    amps, gap, _ = kernel_amplitudes(0)
    report["offset_kernel_gap"] = gap
    amp_scale = 30.0 / gap  # the wanted offset beats every other by 30 logits
    heads = list(OFFSET_HEADS.items())
    for h, (delta, slots) in enumerate(heads):
        q = positional_query(amps * amp_scale, delta) * scale
        # Heads 1 and 3 aim elsewhere at word tokens: the query is linear in the token's is_word flag.
        q_word = positional_query(amps * amp_scale, AT_WORDS[delta]) * scale if delta in AT_WORDS else q
        for dim in range(HEAD_DIM):
            if q[dim] or q_word[dim]:
                w.q_row(0, h, dim)[:] = q[dim] * w.read("const") + (q_word[dim] - q[dim]) * w.read("is_word")
        for src, dst in slots.items():
            for i in range(LAYOUT[src].stop - LAYOUT[src].start):
                l0["o"][LAYOUT[dst].start + i, h * HEAD_DIM + value_index[(src, i)]] = 1.0
    # The window head: topic words within WINDOW back win by 20 logits over everything else.
    lo, hi = WINDOW
    w_amps, w_gap, w_spread = kernel_amplitudes((hi - lo) // 2)
    report.update(window_kernel_gap=w_gap, window_kernel_spread=w_spread)
    w_scale = 20.0 / w_gap
    h = len(heads)
    q = positional_query(w_amps * w_scale, (lo + hi) / 2) * scale
    for dim in range(HEAD_DIM):
        if q[dim]:
            w.q_row(0, h, dim)[:] = q[dim] * w.read("const")
    w.q_row(0, h, topic_dim)[:] = (20.0 + w_scale * w_spread + 5.0) * scale * w.read("const")
    for i in range(len(CLASSES)):
        l0["o"][LAYOUT["window_class"].start + i, h * HEAD_DIM + value_index[("topic_class", i)]] = 1.0
    # The gather head (re-rank): the words and two-digit numbers within GATHER, (nearly) equally weighted, into
    # the word and chunk slots. At word tokens (documents) it looks at the sink (BOS, value zero) instead, so a
    # document's bag and ID are its own.
    h += 1
    g_amps, g_gap, g_ripple = gather_kernel(*GATHER)
    g_scale = 10.0 / g_gap  # 10 logits down outside the window
    report.update(gather_kernel_gap=g_gap, gather_kernel_ripple_logits=g_ripple * g_scale)
    q = positional_query(g_amps * g_scale, GATHER[0] / 2) * scale
    for dim in range(HEAD_DIM):
        if q[dim]:
            w.q_row(0, h, dim)[:] = q[dim] * w.read("const")
    w.q_row(0, h, word_dim)[:] = 15.0 * scale * w.read("const")  # items beat other tokens by 15 logits
    w.q_row(0, h, chunk_dim)[:] = 15.0 * scale * w.read("const")
    w.q_row(0, h, bos_dim)[:] = 200.0 * scale * w.read("is_word")
    for name in ("word", "chunk"):
        for i in range(LAYOUT[name].stop - LAYOUT[name].start):
            l0["o"][LAYOUT[name].start + i, h * HEAD_DIM + value_index[(name, i)]] = 1.0
    assert h == NUM_HEADS - 1

    # Layer 1: retrieval. Group 0 matches letter slots (recall, RAG) and the window class (ICL); group 1 ranks.
    l1 = w.layers[1]
    flags = {  # condition features a key position may need: (slice name, index)
        "m1_space": ("m1", MARKERS.index(" ")),
        "m2_colon": ("m2", MARKERS.index(":")),
        "m2_space": ("m2", MARKERS.index(" ")),
        "m3_colon": ("m3", MARKERS.index(":")),
        "m2_is": ("m2", MARKERS.index("is")),
        "m3_label": ("m3", MARKERS.index("label")),
        "is_num": ("is_num", 0),
        "is_word": ("is_word", 0),
        "bos": ("bos", 0),
    }
    key_features = (
        [(f"l{d}", i) for d in range(3, 8) for i in range(26)]
        + [("a11", i) for i in range(6)]
        + [("window_class", i) for i in range(6)]
    )
    feats = key_features + list(flags.values())
    for dim, (name, i) in zip(content_dims(len(feats)), feats):
        w.k_row(1, 0, dim)[:] = w.read(name, i)
    kdim = dict(zip(key_features + list(flags), content_dims(len(feats))))
    # Values: the key position's own token, for the output.
    v_feats = [("num", i) for i in range(NUM_FEATURES)] + [("word", i) for i in range(len(WORDS))]
    for j, (name, i) in enumerate(v_feats):
        l1["v"][j] = w.read(name, i)

    retrieval = [  # (head, matched slot pairs, key flags, gate = marker slot that marks the question's end, output)
        (0, [(f"l{d}", f"l{d}", 26) for d in (3, 4, 5, 6)], ["m1_space", "m2_colon", "is_num"], ("m1", "Value"), "num"),
        (1, [(f"l{d}", f"l{d}", 26) for d in (4, 5, 6, 7)], ["m2_space", "m3_colon", "is_num"], ("m2", "Value"), "num"),
        (
            2,
            [(f"l{d}", f"l{d}", 26) for d in (4, 5, 6, 7)] + [("a11", "a11", 6)],
            ["m2_is", "is_word"],
            ("m1", "Answer"),
            "word",
        ),
        (3, [("window_class", "window_class", 6)], ["m3_label", "is_num"], ("m1", "label"), "num"),
    ]
    for head, pairs, key_flags, (gate_slot, gate_token), output in retrieval:
        full = len(pairs) + len(key_flags)  # a complete match: every one-hot slot and every flag scores 1
        for q_name, k_name, n in pairs:
            for i in range(n):
                w.q_row(1, head, kdim[(k_name, i)])[:] += BETA * scale * w.read(q_name, i)
        for f in key_flags:
            w.q_row(1, head, kdim[f])[:] += BETA * scale * w.read("const")
        # The sink (BOS) scores full + 1.5 anywhere, full - 0.5 where the gate marker sits: only a complete
        # match, and only at the end of a question, beats it.
        bos_row = w.q_row(1, head, kdim["bos"])
        bos_row += BETA * scale * (full + 1.5) * w.read("const")
        bos_row -= BETA * scale * 2.0 * w.read(gate_slot, MARKERS.index(gate_token))
        # Only the answer's kind is copied (a number, or a word): the other slot may hold re-rank's bags.
        for j, (name, i) in enumerate(v_feats):
            if name == output:
                l1["o"][LAYOUT["out_" + name].start + i, head * HEAD_DIM + j] = 1.0

    build_rerank(w, scale, report)

    # Spare layer-1 heads look at the sink only (so eviction scores are not blurred by uniform attention).
    used = {r[0] for r in retrieval} | set(RERANK_HEADS.values())
    for head in range(NUM_HEADS):
        if head not in used:
            g = head // (NUM_HEADS // NUM_KV_HEADS)
            w.q_row(1, head, kdim["bos"] if g == 0 else RERANK_KDIM[("bos", 0)])[:] = BETA * scale * w.read("const")

    # Unembedding: numbers and words from OUT; a newline from the constant, below any retrieved answer; ">"
    # (between two ranked IDs) right after an ID's second chunk.
    w.final_norm[:] = 1.0
    out_scale = 30.0
    for t, token in enumerate(vocab):
        if token in NUMBERS:
            features = num_features(token)  # unit-normalised, so a chunk sharing one digit scores less
            w.lm_head[t, LAYOUT["out_num"]] = out_scale * features * w.rms / np.linalg.norm(features)
        elif token in WORDS:
            w.lm_head[t, LAYOUT["out_word"].start + WORDS.index(token)] = out_scale * w.rms
        elif token == "\n":
            w.lm_head[t] = 0.4 * out_scale * w.read("const")
        elif token == ">":
            w.lm_head[t] = out_scale * (w.read("m2", MARKERS.index(">")) + w.read("m3", MARKERS.index("Ranking")))
    return w, report


# --- re-rank ---------------------------------------------------------------------------------------------
#
# The answer "7150>8811>1172>..." is written three tokens per document: its ID's first chunk (at ">", or at
# the ":" of "Ranking:"), its second chunk (at the first chunk) and ">" (at the second chunk). Both chunks are
# copied by group-1 heads of layer 1 from the document's last word w4 (its "anchor"), whose residual holds the
# bag of its four words and its ID's two chunks (layer 0). Each head scores every anchor by
#
#     BETA_R * (query words it holds) - B_R * (its ID chunks among those written)   [both / n: gather weights]
#     + 2 A_R (anchor flags) + tie-break (T_R sin of the distance: the earlier of equal documents first)
#
# where the query's words and the written chunks come from layer 0's gather head (each weighted 1/n, n the
# number of items it averages, so relevance and exclusion scale together). The first-chunk head copies the best
# anchor's first chunk; the second-chunk head adds M_R * (digits its first chunk shares with the current token)
# and so copies the second chunk of that same anchor. A written document drops below every unwritten relevant
# one; when none is left the sink (BOS) wins and the answer ends with a newline.
RERANK_HEADS = {"first": 5, "second": 6}
BETA_R = 2100.0  # per query word held, before the gather's 1/n (n <= 21 for ten IDs: >= 100 logits per word)
B_R = 1.5 * BETA_R  # per written chunk held: a written document (two chunks) falls below every unwritten relevant
# one, while a document sharing one chunk with a written ID (two IDs share a chunk often) stays above the
# distractors (measured on 10 prompts: 1.5 ranks 0.94, 2.0 0.93, 2.5 0.92)
A_R = 5 * BETA_R  # per anchor flag (a word token; a two-digit number 13 back). Other positions have one flag at
# most, and some also hold a first chunk 3 back (so get the second-chunk head's M_R): one flag less must cost
# them more than the penalties for written chunks the wanted anchor may carry (up to 2.4 B_R, for IDs like 6161)
T_R = 60.0  # tie-break amplitude
TB_PAIR = 25  # RoPE pair of the tie-break: 7.5e-4 rad per token, sin() rises over the first 2K tokens
M_R = 2e4  # per digit shared with the first chunk just written (second-chunk head): beats a doc sharing one digit
# even when the wanted document holds the current chunk twice (and so loses 2 B_R, see the sink below)
G_R = 1e5  # the sink's lead outside a ranking position
RERANK_KEYS = (
    [("bos", 0), ("is_word", 0), ("id_hi", 20)]
    + [("id_hi", i) for i in range(20)]
    + [("chunk", i) for i in range(CHUNKS)]
    + [("word", i) for i in range(len(WORDS))]
)
# The largest weights on the RoPE pairs that turn least (pair 127 down): a pair holds two features, and turning
# by theta*d mixes them in by sin(theta*d). The words (the smallest weights) end on pairs 42-47.
RERANK_KDIM = dict(zip(RERANK_KEYS, content_dims(len(RERANK_KEYS), first_pair=38, slowest_first=True)))


def chunk_features(c: int) -> np.ndarray:
    return num_features(f"{c:02d}")


def build_rerank(w: Weights, scale: float, report: dict) -> None:
    l1 = w.layers[1]
    g = 1
    for (name, i), dim in RERANK_KDIM.items():
        w.k_row(1, g, dim)[:] = w.read(name, i)
    theta = thetas()[TB_PAIR]
    for dim in (TB_PAIR, TB_PAIR + HEAD_DIM // 2):
        w.k_row(1, g, dim)[:] = w.read("const")
    # Values: the anchor's first chunk (id_hi), and its second (both chunks' features minus the first's).
    for i in range(NUM_FEATURES):
        l1["v"][g * HEAD_DIM + i] = w.read("id_hi", i)
        lo = -w.read("id_hi", i)
        for c in range(CHUNKS):
            lo = lo + chunk_features(c)[i] * w.read("chunk", c)
        l1["v"][g * HEAD_DIM + NUM_FEATURES + i] = lo
    tb_amps = np.zeros(POSITIONAL_PAIRS)
    tb_amps[TB_PAIR] = T_R
    tb = positional_query(tb_amps, np.pi / 2 / theta) * scale  # T_R cos(theta d - pi/2) = T_R sin(theta d)
    gt, ranking = MARKERS.index(">"), MARKERS.index("Ranking")
    for role, head in RERANK_HEADS.items():

        def row(key):
            return w.q_row(1, head, RERANK_KDIM[key])

        for i in range(len(WORDS)):
            row(("word", i))[:] = BETA_R * scale * w.read("word", i)
        for c in range(CHUNKS):
            row(("chunk", c))[:] = -B_R * scale * w.read("chunk", c)
        row(("is_word", 0))[:] = A_R * scale * w.read("const")
        row(("id_hi", 20))[:] = A_R * scale * w.read("const")
        for dim in (TB_PAIR, TB_PAIR + HEAD_DIM // 2):
            w.q_row(1, head, dim)[:] = tb[dim] * w.read("const")
        # The sink: 20 below a document holding nothing, but only where the head's gate holds.
        if role == "first":  # at ">" or at the ":" after "Ranking"
            sink = (2 * A_R - 20 + G_R) * w.read("const") - G_R * (w.read("marker", gt) + w.read("m1", ranking))
            out = 0
        else:  # at a two-digit number after ">" or after "Ranking:"
            for i in range(20):
                row(("id_hi", i))[:] = M_R * scale * w.read("num", i)
            # The current token is itself a chunk (its one-hot is in the chunk slot): every anchor holding it,
            # the wanted one included, loses B_R (and a little more through the gather), twice for an ID like
            # 6161; the sink sits below that.
            sink = (2 * A_R + 2 * M_R - 3 * B_R - 20 + 2 * G_R) * w.read("const") - G_R * (
                w.read("is_num") + w.read("m1", gt) + w.read("m2", ranking)
            )
            out = NUM_FEATURES
        row(("bos", 0))[:] = scale * sink
        for i in range(NUM_FEATURES):
            l1["o"][LAYOUT["out_num"].start + i, head * HEAD_DIM + out + i] = 1.0
    report.update(rerank_tie_break_rad_per_token=float(theta))


def save(out: Path) -> dict:
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    np.random.seed(SEED)
    torch.manual_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    vocab = vocabulary()
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(len(vocab))] == vocab
    w, report = build_weights(vocab)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        intermediate_size=8,
        num_hidden_layers=2,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_CONTEXT,
        rope_theta=ROPE_THETA,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
    )
    config.architectures = ["LlamaForCausalLM"]
    tensors = {"model.embed_tokens.weight": w.embed, "model.norm.weight": w.final_norm, "lm_head.weight": w.lm_head}
    for i, layer in enumerate(w.layers):
        p = f"model.layers.{i}."
        tensors.update(
            {
                p + "input_layernorm.weight": np.ones(HIDDEN),
                p + "post_attention_layernorm.weight": np.ones(HIDDEN),
                p + "self_attn.q_proj.weight": layer["q"],
                p + "self_attn.k_proj.weight": layer["k"],
                p + "self_attn.v_proj.weight": layer["v"],
                p + "self_attn.o_proj.weight": layer["o"],
                # The MLPs are unused (zero): every step of the lookup is attention.
                p + "mlp.gate_proj.weight": np.zeros((8, HIDDEN)),
                p + "mlp.up_proj.weight": np.zeros((8, HIDDEN)),
                p + "mlp.down_proj.weight": np.zeros((HIDDEN, 8)),
            }
        )
    save_file(
        {k: torch.tensor(v, dtype=torch.float32).contiguous() for k, v in tensors.items()},
        str(out / "model.safetensors"),
        metadata={"format": "pt"},
    )
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "construction.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "model")
    args = parser.parse_args(argv)
    print(save(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
