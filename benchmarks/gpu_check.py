"""One-GPU check: kvbench at 32K and 128K tokens on the Llama-3.1-8B architecture (random bf16 weights).

Measured per prompt length, in one process, one case after another on the same model:
- prefill tokens/s of kvbench `full` against the plain transformers model with the same attention
  kernel (sdpa, or flash-attn with --attn flash); kvbench both in one chunk (the engine's own overhead)
  and in chunks of 32768 (how the paper runs it);
- decode tokens/s (greedy, --decode steps after the prompt);
- peak allocated GPU memory of `full`, `snapkv` post-fill and `snapkv` chunked at keep 0.3, and
  `duoattention` at 70% streaming heads (all chunk 32768), against the ledger's `kv_peak_bytes`
  plus the weights and an estimate of the largest activation.

    bash benchmarks/gpu_check.sh                        # the real check (CUDA, no network)
    KVBENCH_GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh   # a tiny config, runs anywhere in seconds

With 2 or more GPUs visible it first runs benchmarks/gpu_parallel.py's cases (data-parallel lm-eval over 2
processes, a model split with parallelize=True); with fewer, it records them as skipped and says why.

Writes a JSON (--json) and prints a table. Cases that would start after --budget-s are skipped and
recorded as such, so the script stays inside its time box on a slower GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import gpu_parallel  # beside this script
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from kvbench import load_method
from kvbench.cache import KVCache
from kvbench.engine import forward_step, kvbench_attention, prefill
from kvbench.method import ModelShape, Phase

# Llama-3.1-8B's architecture (config.json of meta-llama/Llama-3.1-8B), written out: no network.
LLAMA_31_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
    rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192},
)
# Same code path, toy sizes: lets CI and a CPU box run the whole script in seconds.
TINY = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
)
FULL_LENGTHS, TINY_LENGTHS = [32768, 131072], [256, 512]
FULL_CHUNK, TINY_CHUNK = 32768, 128
KEEP, STREAMING_SHARE = 0.3, 0.7
# DuoAttention's streaming heads: kvbench's defaults; the tiny prompts need a smaller window to evict at all.
FULL_SINK_WINDOW, TINY_SINK_WINDOW = (128, 1024), (16, 64)


def build_model(tiny: bool, attn: str, device: torch.device) -> LlamaForCausalLM:
    config = LlamaConfig(**(TINY if tiny else LLAMA_31_8B))
    config._attn_implementation = "flash_attention_2" if attn == "flash" else "sdpa"
    torch.manual_seed(0)
    # Built straight on the device in bf16: an fp32 8B model would first take 32 GB.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


class Clock:
    """Wall time that waits for the GPU, and the peak allocated memory since `reset`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def allocated(self) -> int | None:
        return torch.cuda.memory_allocated() if self.cuda else None

    def peak(self) -> int | None:
        return torch.cuda.max_memory_allocated() if self.cuda else None


def run_hf(model, ids, decode: int, clock: Clock) -> dict:
    """The plain model: one prefill forward into a DynamicCache, then greedy decode steps."""
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        start = clock.now()
        logits = model(input_ids=ids[None], cache=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
        prefilled = clock.now()
        kv_bytes = sum(t.untyped_storage().nbytes() for layer in cache.layers for t in (layer.keys, layer.values))
        tokens = [int(logits.argmax())]
        for step in range(decode):
            position = torch.tensor([[len(ids) + step]], device=ids.device)
            out = model(input_ids=torch.tensor([[tokens[-1]]], device=ids.device), position_ids=position,
                        cache=cache, use_cache=True, logits_to_keep=1)
            tokens.append(int(out.logits[0, -1].argmax()))
        done = clock.now()
    peak = sum(t.untyped_storage().nbytes() for layer in cache.layers for t in (layer.keys, layer.values))
    return {"prefill_s": prefilled - start, "decode_s": done - prefilled, "kv_bytes_after": kv_bytes,
            "kv_peak_bytes": peak, "tokens": tokens}


def run_kvbench(model, ids, method_name: str, params: dict, chunk: int, decode: int, attn: str, clock: Clock) -> dict:
    """What kvbench.generate() runs (its prefill and forward_step), timed apart: prefill, then decode."""
    method = load_method(method_name, **params)
    shape = ModelShape.from_config(model.config)
    method.bind(shape)
    cache = KVCache(shape, method, attn_kernel=attn)
    with kvbench_attention(model), torch.inference_mode():
        start = clock.now()
        logits = prefill(model, cache, ids, chunk)
        prefilled = clock.now()
        kv_after = cache.nbytes
        tokens = [int(logits.argmax())]
        for step in range(decode):
            logits = forward_step(model, cache, torch.tensor([tokens[-1]], device=ids.device), len(ids) + step,
                                  Phase(True, step))
            tokens.append(int(logits.argmax()))
        done = clock.now()
    stats = cache.ledger.stats(tokens=len(ids) + decode)
    return {"prefill_s": prefilled - start, "decode_s": done - prefilled, "kv_bytes_after": kv_after,
            "kv_peak_bytes": stats.kv_peak_bytes, "kv_footprint": round(stats.kv_footprint, 4), "tokens": tokens}


def activation_estimate(config, chunk: int, itemsize: int) -> int:
    """The largest transient tensors of one chunk's forward, roughly: the MLP's gate, up and their product
    (3 x intermediate per token) plus the residual, norm and attention output (3 x hidden per token)."""
    return chunk * (3 * config.intermediate_size + 3 * config.hidden_size) * itemsize


def write_pattern(config, directory: Path) -> str:
    """DuoAttention gate values for every (layer, KV head): random, seeded (no trained pattern offline)."""
    gates = torch.rand(config.num_hidden_layers, config.num_key_value_heads, generator=torch.Generator().manual_seed(0))
    path = directory / "duo_gates.tsv"
    path.write_text("\n".join("\t".join(f"{g:.5f}" for g in row) for row in gates.tolist()) + "\n")
    return str(path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("KVBENCH_GPU_CHECK_TINY") == "1",
                        help="toy model and lengths (also KVBENCH_GPU_CHECK_TINY=1)")
    parser.add_argument("--lengths", type=int, nargs="+")
    parser.add_argument("--chunk-size", type=int)
    parser.add_argument("--decode", type=int, default=32, help="greedy decode steps timed after each prompt")
    parser.add_argument("--attn", choices=["sdpa", "flash"], default="sdpa")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip cases that would start after this")
    parser.add_argument("--json", default="gpu_check.json")
    args = parser.parse_args(argv)
    lengths = args.lengths or (TINY_LENGTHS if args.tiny else FULL_LENGTHS)
    chunk = args.chunk_size or (TINY_CHUNK if args.tiny else FULL_CHUNK)

    began = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.tiny and device.type != "cuda":
        parser.error("the full-size check needs a CUDA GPU; use --tiny (or KVBENCH_GPU_CHECK_TINY=1) elsewhere")
    # First the multi-GPU cases (a small model, a minute or two; skipped at once below 2 GPUs): the one-GPU cases
    # then run in what is left of the budget.
    multi_gpu = gpu_parallel.run()
    print(json.dumps({"multi_gpu": multi_gpu}), flush=True)
    clock = Clock(device)
    model = build_model(args.tiny, args.attn, device)
    weights = clock.allocated()
    config = model.config
    workdir = Path(tempfile.mkdtemp(prefix="kvbench-gpu-check-"))
    pattern = write_pattern(config, workdir)
    itemsize = torch.bfloat16.itemsize
    sink, window = TINY_SINK_WINDOW if args.tiny else FULL_SINK_WINDOW
    cases = {  # name: (runner, method, params, chunk size)
        "hf": ("hf", None, None, None),
        "full_one_chunk": ("kvbench", "full", {}, max(lengths)),
        "full": ("kvbench", "full", {}, chunk),
        "snapkv_postfill": ("kvbench", "snapkv", {"keep": KEEP, "schedule": "postfill"}, chunk),
        "snapkv_chunked": ("kvbench", "snapkv", {"keep": KEEP, "schedule": "chunked"}, chunk),
        "duoattention": ("kvbench", "duoattention", {"pattern": pattern, "head_sparsity": STREAMING_SHARE,
                                              "sink": sink, "window": window}, chunk),
    }
    # Warm-up on a short prompt: one-time costs (CUDA context, kernel selection, lazy imports) stay out.
    warm = torch.randint(0, config.vocab_size, (min(lengths[0], 1024),), generator=torch.Generator().manual_seed(1))
    run_hf(model, warm.to(device), 2, clock)
    run_kvbench(model, warm.to(device), "full", {}, len(warm), 2, args.attn, clock)
    rows = []
    for length in lengths:
        ids = torch.randint(0, config.vocab_size, (length,), generator=torch.Generator().manual_seed(length)).to(device)
        for name, (runner, method, params, case_chunk) in cases.items():
            row = {"tokens": length, "case": name, "chunk_size": case_chunk}
            if time.perf_counter() - began > args.budget_s:
                rows.append(row | {"skipped": f"past the {args.budget_s:.0f} s budget"})
                print(json.dumps(rows[-1]), flush=True)
                continue
            clock.reset_peak()
            if runner == "hf":
                result = run_hf(model, ids, args.decode, clock)
            else:
                result = run_kvbench(model, ids, method, params, min(case_chunk, length), args.decode, args.attn, clock)
            peak = clock.peak()
            act = activation_estimate(config, min(case_chunk or length, length), itemsize)
            row |= {
                "prefill_tok_s": round(length / result["prefill_s"], 1),
                "decode_tok_s": round(args.decode / result["decode_s"], 2) if args.decode else None,
                "kv_bytes_after_prompt": result["kv_bytes_after"],
                "kv_peak_bytes": result["kv_peak_bytes"],
                "kv_footprint": result.get("kv_footprint"),
                "peak_allocated": peak,
                "activation_estimate": act,
                # Measured peak against what the ledger says must be held (+ weights + largest activation).
                "measured_vs_expected": round(peak / (weights + result["kv_peak_bytes"] + act), 3) if peak else None,
                "above_weights_vs_kv_peak": round((peak - weights) / result["kv_peak_bytes"], 3) if peak else None,
                "first_tokens": result["tokens"][:8],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            del result
    by_key = {(r["tokens"], r["case"]): r for r in rows}
    for length in lengths:  # the headline ratios: kvbench full's prefill and decode speed vs the plain model
        hf, one, full = (by_key[(length, c)] for c in ("hf", "full_one_chunk", "full"))
        if "skipped" in hf:
            continue
        for row in (one, full):
            if "skipped" not in row:
                row["prefill_vs_hf"] = round(row["prefill_tok_s"] / hf["prefill_tok_s"], 3)
                if args.decode:
                    row["decode_vs_hf"] = round(row["decode_tok_s"] / hf["decode_tok_s"], 3)
                # Greedy tokens of full attention must match the plain model's (bf16: early ones at least).
                row["tokens_match_hf"] = sum(a == b for a, b in zip(row["first_tokens"], hf["first_tokens"]))
    report = {
        "date": date.today().isoformat(),
        "machine": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()}), "
        f"{torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "tiny": args.tiny,
        "config": {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                    "num_key_value_heads", "head_dim", "intermediate_size")},
        "dtype": "bfloat16",
        "attn": args.attn,
        "chunk_size": chunk,
        "keep": KEEP,
        "streaming_share": STREAMING_SHARE,
        "duo_sink_window": [sink, window],
        "decode_steps": args.decode,
        "weights_bytes": weights,
        "wall_s": round(time.perf_counter() - began, 1),
        "multi_gpu": multi_gpu,
        "rows": rows,
    }
    Path(args.json).write_text(json.dumps(report, indent=1))
    print_table(report)
    return report


def print_table(report: dict) -> None:
    gib = 2**30

    def fmt(value, scale=1.0, digits=1):
        return "-" if value is None else f"{value / scale:.{digits}f}"

    print(f"\n{report['machine']}  torch {report['torch']}  attn={report['attn']}  wall {report['wall_s']} s")
    print(f"{'tokens':>7} {'case':<16} {'prefill tok/s':>13} {'vs hf':>6} {'decode tok/s':>12} {'KV peak GiB':>11} "
          f"{'GPU peak GiB':>12} {'meas/exp':>8}")
    for r in report["rows"]:
        if "skipped" in r:
            print(f"{r['tokens']:>7} {r['case']:<16} skipped: {r['skipped']}")
            continue
        print(f"{r['tokens']:>7} {r['case']:<16} {fmt(r['prefill_tok_s']):>13} {fmt(r.get('prefill_vs_hf'), 1, 3):>6} "
              f"{fmt(r['decode_tok_s'], 1, 2):>12} {fmt(r['kv_peak_bytes'], gib, 3):>11} "
              f"{fmt(r['peak_allocated'], gib, 2):>12} {fmt(r['measured_vs_expected'], 1, 3):>8}")
    multi = report["multi_gpu"]
    print(f"multi-GPU: skipped: {multi['skipped']}" if "skipped" in multi else f"multi-GPU: {json.dumps(multi)}")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
