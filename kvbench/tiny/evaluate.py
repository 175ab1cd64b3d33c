"""Measure a model on the synthetic tasks through kvbench's engine: mean score and mean KV footprint.

    python -m kvbench.tiny.evaluate [--length 1024] [--samples 50] [--method snapkv keep=0.1 schedule=patched]
                                    [--query agnostic]

Prompts come from `kvbench.data.synth`'s generators with the same seeds as `synth.build`, are run one at a
time through `kvbench.generate` (chunked prefill under the method, greedy decode, stop at a newline) and
scored with `kvbench.data.metrics`, as the lm-eval tasks score them.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field

from kvbench.data import common, results, synth

TASKS = tuple(synth.GENERATORS)


@dataclass
class TaskResult:
    task: str
    score: float
    kv_footprint: float
    kv_peak: float
    samples: int
    scores: list[float] = field(default_factory=list)  # each sample's, in order


def samples(task: str, tokenizer, length: int, num_samples: int, seed: int = 42) -> list[dict]:
    """The prompts and answers `synth.build` would make (same seeds), without building a dataset."""
    s = common.settings({"context_length": length, "num_samples": num_samples, "seed": seed, "tokenizer": tokenizer})
    out = []
    for i in range(num_samples):
        rng = random.Random(common.rng_seed(task, s.seed, s.length, i))
        out.append(synth.GENERATORS[task](s, rng, s.length - synth.GEN_TOKENS[task]))
    return out


def score(task: str, output: str, sample: dict) -> float:
    """A generated sample's score under its task's metric: the same scoring as the lm-eval tasks'
    (kvbench.data.results.score)."""
    return results.score({**sample, "metric": synth.METRICS[task]}, output)


def evaluate(
    model,
    tokenizer,
    task: str,
    method=None,
    *,
    length: int = 1024,
    num_samples: int = 20,
    chunk_size: int = 256,
    seed: int = 42,
    prompts: list[dict] | None = None,
    query: str = "aware",
) -> TaskResult:
    """`query="agnostic"`: each prompt's context is prefilled and evicted before its question is fed."""
    from kvbench.engine import generate
    from kvbench.settings import check_query

    check_query(query)
    prompts = prompts if prompts is not None else samples(task, tokenizer, length, num_samples, seed)
    scores, footprints, peaks = [], [], []
    for sample in prompts:
        # A fresh method per request: methods may hold per-request state.
        m = method() if callable(method) and not hasattr(method, "name") else method
        prompt, question_start = sample["prompt"], None
        if query == "agnostic":
            prompt, question_start = common.question_token(
                tokenizer, prompt, len(prompt) - len(sample["template"].suffix)
            )
        result = generate(
            model,
            prompt,
            m,
            tokenizer=tokenizer,
            chunk_size=chunk_size,
            question_start=question_start,
            max_new_tokens=synth.GEN_TOKENS[task],
            stop=["\n"],
        )
        scores.append(score(task, result.text, sample))
        footprints.append(result.stats.kv_footprint)
        peaks.append(result.stats.kv_peak)
    n = len(prompts)
    return TaskResult(task, sum(scores) / n, sum(footprints) / n, sum(peaks) / n, n, scores)


def chance(task: str, tokenizer, length: int = 1024, num_samples: int = 100, seed: int = 0) -> float:
    """What guessing scores: a random value/label from the prompt's own candidates, or a random ranking."""
    import re

    rng = random.Random(seed)
    total = 0.0
    for sample in samples(task, tokenizer, length, num_samples):
        prompt = sample["prompt"]
        if task == "synth_recall":
            guess = rng.choice(re.findall(r": (\d{4})\n", prompt))
        elif task == "synth_rag":
            guess = rng.choice(synth.ATTRIBUTES[re.search(r"what is the (\w+) of", prompt)[1]])
        elif task == "synth_icl":
            guess = str(rng.randrange(len(synth.ATTRIBUTES)))
        else:
            ids = re.findall(r"\[ID: (\d+)\]", prompt)
            guess = " > ".join(rng.sample(ids, 10))
        total += score(task, guess, sample)
    return total / num_samples


def main(argv=None) -> int:
    import kvbench
    from kvbench import tiny

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--method", nargs="*", default=["full"], help="NAME key=value ...")
    parser.add_argument(
        "--query",
        choices=["aware", "agnostic"],
        default="aware",
        help="agnostic: each context prefilled and evicted before its question",
    )
    args = parser.parse_args(argv)
    model, tokenizer = tiny.load()
    name, params = args.method[0], dict(p.split("=", 1) for p in args.method[1:])
    for task in args.tasks:
        r = evaluate(
            model,
            tokenizer,
            task,
            lambda: kvbench.load_method(name, **params),
            length=args.length,
            num_samples=args.samples,
            chunk_size=args.chunk_size,
            query=args.query,
        )
        guess = chance(task, tokenizer, args.length)
        print(
            f"{task:14s} length {args.length} score {r.score:.3f} (chance {guess:.3f}) "
            f"kv_footprint {r.kv_footprint:.3f} kv_peak {r.kv_peak:.3f} n={r.samples}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
