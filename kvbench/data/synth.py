"""Offline synthetic tasks, one per category, generated at any length with the model's tokenizer.

Each exercises its category's skill with a small vocabulary and fixed templates, so that a 2-4 layer
model can learn them (the bundled tiny model is trained on these): find a fact among distractors
(recall, RAG), rank passages by relevance to a query (re-rank), infer a label mapping from many
demonstrations (ICL). Templates echo HELMET's so the skills transfer.
"""

from __future__ import annotations

import random
import string

from kvbench.data import common

WORDS = (
    "red blue green black white gold apple bread milk rice fish cake cat dog bird horse frog bee "
    "sun moon star rain snow wind tree rock river hill lake sea car ship train bike road door "
    "book pen cup box ball hat shoe coat ring bell lamp drum key map"
).split()  # 48 short words
ATTRIBUTES = {
    "color": WORDS[0:6],
    "food": WORDS[6:12],
    "pet": WORDS[12:18],
    "weather": WORDS[18:24],
    "place": WORDS[24:30],
    "vehicle": WORDS[30:36],
}
GENERATOR_VERSION = 1  # raise when a change makes the same seed give other prompts
GEN_TOKENS = {"synth_recall": 8, "synth_rag": 8, "synth_rerank": 64, "synth_icl": 8}
METRICS = {
    "synth_recall": "substring_exact_match",
    "synth_rag": "substring_exact_match",
    "synth_rerank": "ndcg_at_10",
    "synth_icl": "label_accuracy",
}


_ONSETS = "b c d f g h k l m n p r s t v z".split()
_VOWELS = "a e i o u".split()


def pseudo_word(rng: random.Random, syllables: int = 3) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))


def _spread(rng: random.Random, fixed: list[str], fitted: list[str]) -> list[str]:
    """`fixed` items at random depths among `fitted` distractors (depths are drawn once per sample)."""
    items = list(fitted)
    for depth, item in sorted(((rng.random(), item) for item in fixed), reverse=True):
        items.insert(int(depth * len(fitted)), item)
    return items


def _depth_render(seed: int, fixed: list[str], template: common.Template, joiner: str = "\n"):
    # Re-seeding on every render keeps the gold items' relative depths fixed while the haystack is fitted.
    return lambda fitted: template(joiner.join(_spread(random.Random(seed), fixed, fitted)))


# --- recall: key-value lookup --------------------------------------------------------------------------


def _recall(s: common.Settings, rng: random.Random, budget: int) -> dict:
    n = max(16, s.length // 4)
    keys = common.distinct(rng, lambda r: "".join(r.choices(string.ascii_lowercase, k=4)), n + 1)
    values = [str(rng.randint(1000, 9999)) for _ in keys]
    query, gold = keys[0], values[0]
    lines = [f"{k}: {v}" for k, v in zip(keys[1:], values[1:])]
    template = common.Template("Find the value of the key in the list below.\n\n", f"\n\nKey: {query}\nValue:")
    render = _depth_render(rng.getrandbits(31), [f"{query}: {gold}"], template)
    return {"prompt": common.fill(s.tokenizer, render, lines, budget)[0], "template": template, "answers": [gold]}


def _recall_multi(s: common.Settings, rng: random.Random, budget: int, questions: int) -> list[dict]:
    """One key-value list, `questions` of its keys asked about, one document each: the documents share the context
    (the same prefix and list, to the character) and differ only in the question after it."""
    n = max(16, s.length // 4)
    keys = common.distinct(rng, lambda r: "".join(r.choices(string.ascii_lowercase, k=4)), n + questions)
    values = [str(rng.randint(1000, 9999)) for _ in keys]
    asked = [f"{k}: {v}" for k, v in zip(keys[:questions], values[:questions])]
    lines = [f"{k}: {v}" for k, v in zip(keys[questions:], values[questions:])]
    # Filled once, for the longest question (keys have 4 letters, but their tokens may differ), then each question
    # is put after the same context.
    templates = [
        common.Template("Find the value of the key in the list below.\n\n", f"\n\nKey: {k}\nValue:")
        for k in keys[:questions]
    ]
    longest = max(templates, key=lambda t: common.count_tokens(s.tokenizer, t.suffix))
    render = _depth_render(rng.getrandbits(31), asked, longest)
    filled = common.fill(s.tokenizer, render, lines, budget)[0]
    context = filled.removeprefix(longest.prefix).removesuffix(longest.suffix)
    return [
        {"prompt": template(context), "template": template, "answers": [value]}
        for template, value in zip(templates, values[:questions])
    ]


# --- RAG: a fact about an entity among passages about others -------------------------------------------


def _rag(s: common.Settings, rng: random.Random, budget: int) -> dict:
    n = max(16, s.length // 8)
    names = common.distinct(rng, lambda r: pseudo_word(r, 2), n // len(ATTRIBUTES) + 2)
    facts = [(name, attr, rng.choice(values)) for name in names for attr, values in ATTRIBUTES.items()]
    rng.shuffle(facts)
    (name, attr, gold), distractors = facts[0], facts[1:]
    passage = "Document: the {1} of {0} is {2}."
    template = common.Template(
        "Use the given documents to answer the question.\n\n", f"\n\nQuestion: what is the {attr} of {name}?\nAnswer:"
    )
    render = _depth_render(rng.getrandbits(31), [passage.format(name, attr, gold)], template)
    pieces = [passage.format(*f) for f in distractors]
    return {"prompt": common.fill(s.tokenizer, render, pieces, budget)[0], "template": template, "answers": [gold]}


# --- re-rank: relevance = how many query words a passage holds -----------------------------------------

# After the documents the task is restated (as RankGPT's post-prompt does) before the query. It holds none of
# WORDS and no digits, so the query sits well apart from the last document: a reader that looks back a
# fixed span from the end of the prompt sees the query and its own answer, not a document.
RERANK_RESTATED = (
    "Rank the documents above by how many words of the query below they contain, most first. "
    "Write the IDs of the most relevant documents in the format given, and nothing else."
)


def _rerank_ids(rng: random.Random, count: int) -> list[str]:
    """Distinct 4-digit IDs (as recall's values: two 2-digit tokens for the tiny model); 5 digits past 9,000."""
    low = 1000 if count <= 9000 else 10000
    return [str(i) for i in rng.sample(range(low, 10 * low), count)]


def _rerank(s: common.Settings, rng: random.Random, budget: int) -> dict:
    query = rng.sample(WORDS, 3)
    others = [w for w in WORDS if w not in query]
    n = max(16, s.length // 8)
    ids = _rerank_ids(rng, n + 16)
    relevant = []  # 10 relevant passages: 2 hold all three query words, 3 hold two, 5 hold one
    for overlap in [3] * 2 + [2] * 3 + [1] * 5:
        words = rng.sample(query, overlap) + rng.sample(others, 4 - overlap)
        rng.shuffle(words)
        relevant.append((ids.pop(), overlap, " ".join(words)))
    passage = "[ID: {0}] Document: {2}"
    distractors = [passage.format(ids.pop(), 0, " ".join(rng.sample(others, 4))) for _ in range(n)]
    template = common.Template(
        "Rank the documents by how many words of the query they contain, most first. Write the IDs of the "
        "10 most relevant documents in this format:\nRanking: ID3 > ID1 > ID2\n\n",
        f"\n\n{RERANK_RESTATED}\n\nQuery: {' '.join(query)}\nRanking:",
    )
    render = _depth_render(rng.getrandbits(31), [passage.format(*r) for r in relevant], template)
    prompt, fitted = common.fill(s.tokenizer, render, distractors, budget)
    qrels = [f"{i}:{o}" for i, o, _ in relevant] + [f"{p.split(']')[0][5:]}:0" for p in distractors[:fitted]]
    gold = " > ".join(i for i, _, _ in sorted(relevant, key=lambda r: -r[1]))
    return {"prompt": prompt, "template": template, "answers": [gold], "qrels": qrels}


# --- ICL: six classes, each owning a few topic words; labels are shuffled integers per sample -----------


def _icl_text(rng: random.Random, topic: list[str], noise: list[str]) -> str:
    words = rng.sample(topic, 2) + rng.sample(noise, 2)
    rng.shuffle(words)
    return " ".join(words)


def _icl(s: common.Settings, rng: random.Random, budget: int) -> dict:
    topics = list(ATTRIBUTES.values())  # class c owns the six words of one attribute
    noise = [pseudo_word(rng, 2) for _ in range(12)]
    mapping = rng.sample(range(len(topics)), len(topics))  # class -> the integer label shown
    gold_class = rng.randrange(len(topics))
    question = _icl_text(rng, topics[gold_class], noise)
    # Balanced rounds, every class once per round in random order (as HELMET's balanced demos).
    demos = []
    for _ in range(max(1, s.length // (4 * len(topics)))):
        for c in rng.sample(range(len(topics)), len(topics)):
            demos.append(f"{_icl_text(rng, topics[c], noise)}\nlabel: {mapping[c]}")
    template = common.Template(
        "Use the provided mapping from the text to label to assign a label to the text. "
        'Only output "label: {label}" and nothing else. \n\n',
        f"\n\n{question}\nlabel:",
    )
    prompt = common.fill(s.tokenizer, lambda items: template("\n\n".join(items)), demos, budget)[0]
    return {"prompt": prompt, "template": template, "answers": [str(mapping[gold_class])]}


GENERATORS = {"synth_recall": _recall, "synth_rag": _rag, "synth_rerank": _rerank, "synth_icl": _icl}
MULTI_QUESTION = {"synth_recall_multi": ("synth_recall", _recall_multi)}  # variant: (its task, generator)
DEFAULT_QUESTIONS = 4


def build(task: str, **settings) -> dict:
    """lm-eval's custom_dataset for a synthetic task. A multi-question variant gives `num_questions` (metadata)
    documents per sample, sharing one context (`context_group`: the sample's number)."""
    s = common.settings(settings)
    rows = []
    for i in range(s.num_samples):
        rng = random.Random(common.rng_seed(task, s.seed, s.length, i))
        if task in MULTI_QUESTION:
            base, generator = MULTI_QUESTION[task]
            questions = common.positive_int(settings, "num_questions", DEFAULT_QUESTIONS)
            samples = [
                {**row, "context_group": str(i)} for row in generator(s, rng, s.length - GEN_TOKENS[base], questions)
            ]
        else:
            base, samples = task, [GENERATORS[task](s, rng, s.length - GEN_TOKENS[task])]
        rows += [{**sample, "metric": METRICS[base], "task": task, "length": s.length} for sample in samples]
    common.record_source(
        task,
        data="generated",
        generator="kvbench.data.synth",
        version=GENERATOR_VERSION,
        seed=s.seed,
        context_length=s.length,
    )
    return common.to_dataset(rows)
