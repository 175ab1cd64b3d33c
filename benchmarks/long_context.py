"""Chunked prefill at 32K-128K tokens against one chunk: wall time and peak memory.

The paper's setting prefills 128K tokens in chunks of 32K. Each case (prompt length x chunk size) runs `full`
through kvbench.generate (prefill + 1 token) in a fresh subprocess, so its peak resident memory (ru_maxrss) is
its own; the time is the median of `--repeats` runs. A random-weight Llama with 1 layer, hidden 64, 4 query / 2 KV heads: the attention dominates, the
weights are negligible, so what is measured is the harness's cost per token, not the model's.

    python benchmarks/long_context.py --json benchmarks/results/long_context_cpu.json

The goal (issue "128K without a quadratic mask"): chunked / one chunk <= 1.2 in time, and a chunked peak within
10% of one chunk's peak plus the KV cache held.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

CASES = {32768: [8192, 16384, 32768], 65536: [8192, 16384, 32768, 65536], 131072: [8192, 16384, 32768, 131072]}


def one_case(length: int, chunk: int, repeats: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kvbench import generate

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=length + 8,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).eval()
    prompt = torch.randint(0, config.vocab_size, (length,))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = generate(model, prompt, chunk_size=chunk, max_new_tokens=1, eos_token_id=[])
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {
        "length": length,
        "chunk": chunk,
        "seconds": seconds,
        "peak_rss_bytes": peak,
        "kv_peak_bytes": result.stats.kv_peak_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs per case")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--case", nargs=3, type=int, help=argparse.SUPPRESS)  # LENGTH CHUNK REPEATS, in a subprocess
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(*args.case)))
        return
    import torch

    rows = []
    for length in args.lengths:
        for chunk in CASES.get(length, [8192, length]):
            done = subprocess.run(
                [sys.executable, __file__, "--case", str(length), str(chunk), str(args.repeats)],
                check=True,
                capture_output=True,
                text=True,
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(
                f"{length:>7} chunk {chunk:>6}: {rows[-1]['seconds']:7.1f} s, peak RSS "
                f"{rows[-1]['peak_rss_bytes'] / 2**30:.2f} GiB",
                flush=True,
            )
    print("\n| prompt | chunk | time | time / one chunk | peak RSS | peak - one chunk's peak | KV held at the end |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        whole = next(r for r in rows if r["length"] == row["length"] and r["chunk"] == row["length"])
        print(
            f"| {row['length']:,} | {row['chunk']:,} | {row['seconds']:.1f} s | "
            f"{row['seconds'] / whole['seconds']:.2f} | {row['peak_rss_bytes'] / 2**30:.2f} GiB | "
            f"{(row['peak_rss_bytes'] - whole['peak_rss_bytes']) / 2**20:+.0f} MiB | "
            f"{row['kv_peak_bytes'] / 2**20:.0f} MiB |"
        )
    if args.json:
        machine = {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
