"""Engine overhead: kvbench `full` vs the plain transformers model, and `streamingllm` vs `full`.

A random-weight Llama of a few layers on CPU, prompts of 4K-16K tokens, prefill + a few greedy
decode steps, all measured in one run (median of repeats, interleaved so drift hits both sides).

    python benchmarks/engine.py [--lengths 4096 8192 16384] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kvbench import generate
from kvbench.methods.full import Full
from kvbench.methods.streamingllm import StreamingLLM

NEW_TOKENS = 16


def build_model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=2048, help="for the streamingllm-vs-full comparison")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    model = build_model()
    rows = []
    for length in args.lengths:
        prompt = torch.randint(0, model.config.vocab_size, (length,))

        def hf():
            with torch.inference_mode():
                model.generate(
                    prompt[None], max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
                )

        def run(method, chunk_size):
            return lambda: generate(
                model, prompt, method, chunk_size=chunk_size, max_new_tokens=NEW_TOKENS, eos_token_id=[]
            )

        cases = {
            "hf": hf,
            "full_one_chunk": run(Full(), 32768),
            "full_chunked": run(Full(), args.chunk_size),
            "streamingllm_chunked": run(StreamingLLM(sink=128, window=1024), args.chunk_size),
        }
        run(Full(), 32768)()  # warm-up
        times = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, fn in cases.items():
                times[name].append(timed(fn))
        median = {name: statistics.median(values) for name, values in times.items()}
        row = {
            "tokens": length,
            **{f"{name}_s": round(value, 3) for name, value in median.items()},
            "full_vs_hf": round(median["full_one_chunk"] / median["hf"], 3),
            "streamingllm_vs_full_chunked": round(median["streamingllm_chunked"] / median["full_chunked"], 3),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "new_tokens": NEW_TOKENS,
        "chunk_size": args.chunk_size,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
