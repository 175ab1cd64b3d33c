"""Method overhead and scaling on CPU, measured in one run.

1. Each built-in method's wall time relative to `full` (same chunk size) at 8K and 16K tokens:
   the cost of scoring and gathering, against the attention it saves.
2. Prefill time against prompt length (2K-32K) for `snapkv` chunked vs post-fill at keep=0.25,
   with the fitted exponent of time ~ length^b: chunked eviction keeps each chunk's attention
   span bounded, so it should grow close to linearly; post-fill does full attention first.

    python benchmarks/methods.py [--lengths 8192 16384] [--scaling 2048 4096 8192 16384 32768] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kvbench import generate, load_method

CHUNK = 2048
NEW_TOKENS = 8


def build_model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=40000,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def method_settings(pattern: str) -> dict[str, dict]:
    score = {"keep": 0.25}
    return {
        "full": {},
        "streamingllm": {"sink": 128, "window": 1024},
        "duoattention": {"pattern": pattern, "head_sparsity": 0.5},
        "prulong": {"pattern": pattern, "head_sparsity": 0.5},
        "snapkv (chunked)": {**score, "schedule": "chunked"},
        "snapkv (patched)": {**score, "schedule": "patched"},
        "snapkv (postfill)": {**score, "schedule": "postfill"},
        "pyramidkv (patched)": {**score, "schedule": "patched"},
        "l2norm": score,
        "h2o": score,
        "full kv_bits=8": {"kv_bits": 8},
    }


def timed(model, prompt, name, params, new_tokens=NEW_TOKENS) -> float:
    method = load_method(name.split(" ")[0], **params)
    start = time.perf_counter()
    generate(model, prompt, method, chunk_size=CHUNK, max_new_tokens=new_tokens, eos_token_id=[])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--scaling", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()

    model = build_model()
    shape = (model.config.num_hidden_layers, model.config.num_key_value_heads)
    pattern = Path(tempfile.mkdtemp()) / "gates.tsv"
    gates = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    pattern.write_text("\n".join("\t".join(f"{g:.4f}" for g in row) for row in gates.tolist()))
    settings = method_settings(str(pattern))
    report = {"chunk_size": CHUNK, "new_tokens": NEW_TOKENS, "overhead": [], "scaling": []}

    for length in args.lengths:
        prompt = torch.randint(0, model.config.vocab_size, (length,))
        timed(model, prompt, "full", {})  # warm-up
        times = {name: [] for name in settings}
        for _ in range(args.repeats):
            for name, params in settings.items():
                times[name].append(timed(model, prompt, name, params))
        median = {name: statistics.median(t) for name, t in times.items()}
        row = {"tokens": length, "full_s": round(median["full"], 2)}
        row |= {name: round(t / median["full"], 3) for name, t in median.items() if name != "full"}
        report["overhead"].append(row)
        print(json.dumps(row), flush=True)

    for length in args.scaling:
        prompt = torch.randint(0, model.config.vocab_size, (length,))
        row = {"tokens": length}
        for schedule in ("chunked", "postfill"):
            row[schedule + "_s"] = round(
                min(
                    timed(model, prompt, "snapkv", {"keep": 0.25, "schedule": schedule}, new_tokens=1)
                    for _ in range(args.repeats)
                ),
                3,
            )
        report["scaling"].append(row)
        print(json.dumps(row), flush=True)
    for schedule in ("chunked", "postfill"):
        xs = [math.log(r["tokens"]) for r in report["scaling"]]
        ys = [math.log(r[schedule + "_s"]) for r in report["scaling"]]
        mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
        report[f"exponent_{schedule}"] = round(slope, 3)
        print(f"snapkv {schedule}: prefill time ~ length^{slope:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
