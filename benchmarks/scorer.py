"""How long `kvbench leaderboard` takes on a paper-sized sweep, with its intervals and ranks.

A synthetic sweep shaped as the paper's grid: 8 methods x 9 knob values x 14 tasks (HELMET's four categories:
recall 4, RAG 4, re-rank 1, ICL 5) x 2 query modes, plus `full`, each cell a results.json and a per-sample file of
100 rows as `kvbench sweep` writes them (outcomes drawn from a known curve per method, coupled across settings).
Times reading the files, scoring with 0 bootstrap replicates (the point estimates alone: the baseline), and scoring
with 2000 replicates, in one run.

    python benchmarks/scorer.py --json benchmarks/results/scorer_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

TASKS = {
    "recall": ["json_kv", "ruler_mk_needle", "ruler_mk_uuid", "ruler_mv"],
    "rag": ["kilt_nq", "kilt_triviaqa", "kilt_hotpotqa", "kilt_popqa"],
    "rerank": ["msmarco_rerank"],
    "icl": ["icl_trec_coarse", "icl_trec_fine", "icl_banking77", "icl_clinc150", "icl_nlu"],
}
METHODS = ["streamingllm", "duoattention", "prulong", "snapkv", "pyramidkv", "l2norm", "h2o", "tova"]
KNOB_VALUES = np.linspace(0.1, 0.9, 9)


def write_cell(folder: Path, method: str, params: dict, query: str, task: str, category: str, scores, footprint):
    folder.mkdir(parents=True)
    name = f"kvbench_{task}"
    data = {
        "results": {name: {"alias": name, "score,none": float(np.mean(scores)), "score_stderr,none": 0.01}},
        "configs": {
            name: {
                "task": name,
                "metadata": {"category": category, "context_length": 131072},
                "generation_kwargs": {"until": ["\n"], "max_gen_toks": 50},
                "doc_to_text": "{{prompt}}",
            }
        },
        "n-samples": {name: {"original": len(scores), "effective": len(scores)}},
        "config": {
            "kvbench": {
                "model": "meta-llama/Llama-3.1-8B-Instruct",
                "method": method,
                "method_params": params,
                "chunk_size": 32768,
                "query": query,
                "tasks": {
                    name: {
                        "kv_footprint": footprint,
                        "kv_peak": footprint,
                        "kv_peak_bytes": 1e9 * footprint,
                        "requests": len(scores),
                    }
                },
            },
            "kvbench_sweep": {"method": method, "params": params, "task": name, "knob": "keep"},
        },
    }
    (folder / "results.json").write_text(json.dumps(data, indent=1))
    rows = [{"doc_id": i, "filter": "none", "score": float(s), "kv_footprint": footprint} for i, s in enumerate(scores)]
    (folder / f"samples_{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_sweep(root: Path, samples: int = 100, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    count = 0
    for category, tasks in TASKS.items():
        for task in tasks:
            u = rng.random(samples)  # a sample's difficulty: it passes wherever the method's pass rate exceeds it
            for query in ("aware", "agnostic"):
                write_cell(root / f"full-{task}-{query}", "full", {}, query, task, category, (u < 0.95) * 1.0, 1.0)
                count += 1
                for m, method in enumerate(METHODS):
                    middle = 0.2 + 0.07 * m + (0.05 if query == "agnostic" else 0.0)
                    for keep in KNOB_VALUES:
                        rate = 0.97 / (1 + np.exp(-(keep - middle) / 0.08))
                        write_cell(
                            root / f"{method}-{keep:.1f}-{task}-{query}",
                            method,
                            {"keep": float(keep)},
                            query,
                            task,
                            category,
                            (u < rate) * 1.0,
                            float(keep),
                        )
                        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--replicates", type=int, default=2000)
    args = parser.parse_args()

    import warnings

    from kvbench import leaderboard, scoring

    warnings.simplefilter("ignore", scoring.ResultFileWarning)
    with tempfile.TemporaryDirectory() as folder:
        cells = make_sweep(Path(folder))
        started = time.perf_counter()
        runs = scoring.load_runs([folder])
        read = time.perf_counter() - started
        started = time.perf_counter()
        plain = scoring.score_runs(runs, replicates=0)
        points_only = time.perf_counter() - started
        started = time.perf_counter()
        boards = scoring.score_runs(runs, replicates=args.replicates)
        text = leaderboard.render(boards, "json", 0.9)
        bootstrap = time.perf_counter() - started
    figures = {
        "cells": cells,
        "samples_per_cell": 100,
        "replicates": args.replicates,
        "read_s": round(read, 2),
        "score_without_intervals_s": round(points_only, 2),
        "score_with_intervals_s": round(bootstrap, 2),
        "total_s": round(read + bootstrap, 2),
        "intervals_vs_points_only": round(bootstrap / points_only, 1),
        "curves": sum(len(cb.critical) for b in boards for cb in b.categories.values()),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "json_bytes": len(text),
    }
    assert plain and all(cb.interval for b in boards for cb in b.categories.values())
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
