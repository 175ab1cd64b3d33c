"""Build kvbench-tiny: a 2-layer Llama (GQA, RoPE) whose weights are set by construction, and its tokenizer.

    python -m kvbench.tiny.build [--out DIR]        # seconds on a laptop CPU; deterministic

Why constructed, not trained: on 2 CPU cores a small transformer trained on key->value lookup sits at
chance for thousands of steps before the induction circuit forms. Here the circuit is written down
instead, in a standard checkpoint that transformers and kvbench run like any other model:

  layer 0  "offset" heads: RoPE phases make head h attend to the token exactly `delta_h` back and copy
           its features (letter, marker word, attribute, topic class) into a slot of the residual
           stream; one "window" head averages the topic classes of the last ~15 tokens (ICL).
  layer 1  retrieval heads: a query built from the question's slots is matched against every earlier
           position's slots (content only: low-frequency RoPE pairs barely rotate), and the matched
           position's token is copied to the output. When nothing matches fully, a head attends to
           the first token (BOS, the attention sink) whose value is zero, and a constant logit makes
           the model end the answer with a newline.

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

TEMPLATE_WORDS = ("Find the value of key in list below Key Value Use given documents to answer question Document is "
                  "Question what Answer Rank by how many words query they contain most first Write IDs relevant "
                  "this format Ranking ID Query provided mapping from text label assign Only output and nothing "
                  "else").split()
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
NUMBERS = [str(i) for i in range(10)] + [f"{i:02d}" for i in range(100)]  # numbers split in 2-digit chunks
MARKERS = [" ", ":", "\n", "is", "Value", "Answer", "label"]  # tokens whose presence at an offset is a condition
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
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


# --- residual stream layout ------------------------------------------------------------------------------

CLASSES = list(ATTRIBUTES)  # ICL class c owns the six words of attribute c
TOPIC_CLASS = {w: c for c, ws in enumerate(ATTRIBUTES.values()) for w in ws}
NUM_FEATURES = 22  # tens digit (10), units digit (10), two-digit flag, one-digit flag


def _layout(spec: list[tuple[str, int]]) -> dict[str, slice]:
    out, start = {}, 0
    for name, size in spec:
        out[name] = slice(start, start + size)
        start += size
    out["_size"] = start
    return out


# Token features from the embedding, slots written by layer 0, and OUT read by the unembedding.
LAYOUT = _layout([
    ("const", 1), ("bos", 1), ("letter", 26), ("marker", len(MARKERS)), ("word", len(WORDS)),
    ("attr", len(CLASSES)), ("topic_class", len(CLASSES)), ("topic", 1), ("num", NUM_FEATURES),
    ("is_num", 1), ("is_word", 1),
    ("m1", len(MARKERS)), ("m2", len(MARKERS)), ("m3", len(MARKERS)),
    ("l3", 26), ("l4", 26), ("l5", 26), ("l6", 26), ("l7", 26), ("a11", len(CLASSES)), ("window_class", len(CLASSES)),
    ("out_num", NUM_FEATURES), ("out_word", len(WORDS)), ("out_newline", 1),
])
HIDDEN = 400  # a multiple of NUM_HEADS (transformers checks)
assert LAYOUT["_size"] <= HIDDEN

# What a layer-0 offset head copies: these features of the token `delta` back (one value vector for all).
COPIED = ["letter", "marker", "attr", "topic_class"]
OFFSET_HEADS = {1: {"marker": "m1"}, 2: {"marker": "m2"}, 3: {"marker": "m3", "letter": "l3"}, 4: {"letter": "l4"},
                5: {"letter": "l5"}, 6: {"letter": "l6"}, 7: {"letter": "l7"}, 11: {"attr": "a11"}}
WINDOW = (3, 17)  # ICL: a demo's text is 13 tokens, ending 4 before its label and 2 before the question's end


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
    rows = [np.hstack([-c_in, np.ones((len(d_in), 1)), np.zeros((len(d_in), 1))]),  # lo - S_in <= 0
            np.hstack([c_out, -np.ones((len(d_out), 1)), np.ones((len(d_out), 1))])]  # S_out - lo + gap <= 0
    bounds = [(0, None)] * n + [(None, None), (None, None)]
    res = linprog(cost, A_ub=np.vstack(rows), b_ub=np.zeros(len(d_in) + len(d_out)),
                  A_eq=np.hstack([np.ones((1, n)), np.zeros((1, 2))]), b_eq=[1], bounds=bounds, method="highs")
    assert res.success, res.message
    amps = res.x[:n]
    spread = float(c_in.dot(amps).max() - c_in.dot(amps).min())
    return amps, float(res.x[-1]), spread


def positional_query(amps: np.ndarray, center: float) -> np.ndarray:
    """Query on the rotary dims that, against a constant key, scores sum_i A_i cos(theta_i (distance - center))."""
    theta = thetas()[:POSITIONAL_PAIRS]
    q = np.zeros(HEAD_DIM)
    # HF rotary pairs dims i and i + HEAD_DIM/2; a query phase of -theta*center centres the kernel on `center`.
    q[:POSITIONAL_PAIRS] = amps * np.cos(theta * center)
    q[HEAD_DIM // 2 : HEAD_DIM // 2 + POSITIONAL_PAIRS] = -amps * np.sin(theta * center)
    return q


def content_dims(n: int) -> list[int]:
    """Head dims whose RoPE pairs turn by < 1.3e-6 rad per token: for content matching at any distance."""
    dims = [d for i in range(POSITIONAL_PAIRS, HEAD_DIM // 2) for d in (i, i + HEAD_DIM // 2)]
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
        self.layers = [{"q": np.zeros((NUM_HEADS * hd, d)), "k": np.zeros((NUM_KV_HEADS * hd, d)),
                        "v": np.zeros((NUM_KV_HEADS * hd, d)), "o": np.zeros((d, NUM_HEADS * hd))} for _ in range(2)]
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

    # Layer 0: every head in both groups sees the same keys (constant, plus the topic flag) and values.
    l0 = w.layers[0]
    topic_dim = content_dims(1)[0]
    copied = [(name, i) for name in COPIED for i in range(LAYOUT[name].stop - LAYOUT[name].start)]
    for g in range(NUM_KV_HEADS):
        for dim in range(POSITIONAL_PAIRS):
            w.k_row(0, g, dim)[:] = w.read("const")
        w.k_row(0, g, topic_dim)[:] = w.read("topic")
        for j, (name, i) in enumerate(copied):
            l0["v"][g * HEAD_DIM + j] = w.read(name, i)
    value_index = {feat: j for j, feat in enumerate(copied)}

    amps, gap, _ = kernel_amplitudes(0)
    report["offset_kernel_gap"] = gap
    amp_scale = 30.0 / gap  # the wanted offset beats every other by 30 logits
    heads = list(OFFSET_HEADS.items())
    for h, (delta, slots) in enumerate(heads):
        q = positional_query(amps * amp_scale, delta) * scale
        for dim in range(HEAD_DIM):
            if q[dim]:
                w.q_row(0, h, dim)[:] = q[dim] * w.read("const")
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
    # Spare layer-0 heads keep q = 0 and o = 0: they attend uniformly and write nothing.

    # Layer 1: retrieval. Group 0 matches letter slots (recall, RAG); group 1 matches the window class (ICL).
    l1 = w.layers[1]
    flags = {  # condition features a key position may need: (slice name, index)
        "m1_space": ("m1", MARKERS.index(" ")), "m2_colon": ("m2", MARKERS.index(":")),
        "m2_space": ("m2", MARKERS.index(" ")), "m3_colon": ("m3", MARKERS.index(":")),
        "m2_is": ("m2", MARKERS.index("is")), "m3_label": ("m3", MARKERS.index("label")),
        "is_num": ("is_num", 0), "is_word": ("is_word", 0), "bos": ("bos", 0),
    }
    key_features = {0: [(f"l{d}", i) for d in range(3, 8) for i in range(26)] + [("a11", i) for i in range(6)],
                    1: [("window_class", i) for i in range(6)]}
    for g in (0, 1):
        feats = key_features[g] + list(flags.values())
        for dim, (name, i) in zip(content_dims(len(feats)), feats):
            w.k_row(1, g, dim)[:] = w.read(name, i)
    kdim = {g: dict(zip(key_features[g] + list(flags), content_dims(len(key_features[g]) + len(flags))))
            for g in (0, 1)}
    # Values: the key position's own token, for the output.
    v_feats = [("num", i) for i in range(NUM_FEATURES)] + [("word", i) for i in range(len(WORDS))]
    for g in (0, 1):
        for j, (name, i) in enumerate(v_feats):
            l1["v"][g * HEAD_DIM + j] = w.read(name, i)

    retrieval = [  # (head, group, matched slot pairs, key flags, gate = marker slot that marks the question's end)
        (0, 0, [(f"l{d}", f"l{d}", 26) for d in (3, 4, 5, 6)], ["m1_space", "m2_colon", "is_num"], ("m1", "Value")),
        (1, 0, [(f"l{d}", f"l{d}", 26) for d in (4, 5, 6, 7)], ["m2_space", "m3_colon", "is_num"], ("m2", "Value")),
        (2, 0, [(f"l{d}", f"l{d}", 26) for d in (4, 5, 6, 7)] + [("a11", "a11", 6)], ["m2_is", "is_word"],
         ("m1", "Answer")),
        (5, 1, [("window_class", "window_class", 6)], ["m3_label", "is_num"], ("m1", "label")),
    ]
    for head, g, pairs, key_flags, (gate_slot, gate_token) in retrieval:
        full = len(pairs) + len(key_flags)  # a complete match: every one-hot slot and every flag scores 1
        for q_name, k_name, n in pairs:
            for i in range(n):
                w.q_row(1, head, kdim[g][(k_name, i)])[:] += BETA * scale * w.read(q_name, i)
        for f in key_flags:
            w.q_row(1, head, kdim[g][f])[:] += BETA * scale * w.read("const")
        # The sink (BOS) scores full + 1.5 anywhere, full - 0.5 where the gate marker sits: only a complete
        # match, and only at the end of a question, beats it.
        bos_row = w.q_row(1, head, kdim[g]["bos"])
        bos_row += BETA * scale * (full + 1.5) * w.read("const")
        bos_row -= BETA * scale * 2.0 * w.read(gate_slot, MARKERS.index(gate_token))
        for j, (name, i) in enumerate(v_feats):
            dst = "out_num" if name == "num" else "out_word"
            l1["o"][LAYOUT[dst].start + i, head * HEAD_DIM + j] = 1.0
    # Spare layer-1 heads look at the sink only (so eviction scores are not blurred by uniform attention).
    for head in range(NUM_HEADS):
        if head not in {r[0] for r in retrieval}:
            g = head // (NUM_HEADS // NUM_KV_HEADS)
            w.q_row(1, head, kdim[g]["bos"])[:] = BETA * scale * w.read("const")

    # Unembedding: numbers and words from OUT; a newline from the constant, below any retrieved answer.
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
    return w, report


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
        vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=8, num_hidden_layers=2,
        num_attention_heads=NUM_HEADS, num_key_value_heads=NUM_KV_HEADS, head_dim=HEAD_DIM,
        max_position_embeddings=MAX_CONTEXT, rope_theta=ROPE_THETA, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, dtype="float32",
    )
    config.architectures = ["LlamaForCausalLM"]
    tensors = {"model.embed_tokens.weight": w.embed, "model.norm.weight": w.final_norm, "lm_head.weight": w.lm_head}
    for i, layer in enumerate(w.layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": np.ones(HIDDEN), p + "post_attention_layernorm.weight": np.ones(HIDDEN),
            p + "self_attn.q_proj.weight": layer["q"], p + "self_attn.k_proj.weight": layer["k"],
            p + "self_attn.v_proj.weight": layer["v"], p + "self_attn.o_proj.weight": layer["o"],
            # The MLPs are unused (zero): every step of the lookup is attention.
            p + "mlp.gate_proj.weight": np.zeros((8, HIDDEN)), p + "mlp.up_proj.weight": np.zeros((8, HIDDEN)),
            p + "mlp.down_proj.weight": np.zeros((HIDDEN, 8)),
        })
    save_file({k: torch.tensor(v, dtype=torch.float32).contiguous() for k, v in tensors.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
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
