"""The prepared GPU check: kvbench on the Llama-3.1-8B architecture (random bf16 weights) at 8K, 32K and 128K tokens,
and a sliding-window model at 64K, in one process, inside 8 minutes on one H100/H200.

Every case runs in its own try with its own time budget, and writes its JSON line (to stdout and, appended, to
--json) the moment it ends, so a case that fails, runs out of memory or out of time costs only itself, and a hard
timeout still leaves every finished case on disk. The script imports this checkout's kvbench (not an installed one)
and exits non-zero naming the cases that failed.

Cases (full size; --tiny: the same cases on toy sizes, any machine, seconds):
- `logits_vs_hf`: kvbench `full` (chunks of 2048) against the plain transformers model at 8K tokens: the teacher-forced
  log-probabilities of 16 continuation tokens, their largest difference (a tolerance, not greedy tokens, which near-tie
  on random weights);
- `hf` at 32K and 128K: the plain model's prefill in one forward (sdpa): time and the allocator's peak;
- `full`, `snapkv` (patched, keep 0.3), `duoattention` (70% streaming heads, seeded gates), `streamingllm` at 32K and
  128K in chunks of 32768: prefill time and its ratio to `hf`, the allocator's peak (reset per request by the engine)
  beside the ledger's `kv_peak_bytes` and `kv_transient_peak_bytes` and the weights, the footprint, the kernel;
- `sliding_window`: a Mistral-7B-shaped model (window 4096) at 64K tokens, `full` in chunks of 32768 against the plain
  model: time, peaks, and the largest log-probability difference;
- the multi-GPU cases (benchmarks/gpu_parallel.py), skipped, saying why, with one GPU.

    bash benchmarks/gpu_check.sh --json gpu_check.jsonl           # on the GPU machine (see benchmarks/README.md)
    KVBENCH_GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh          # tiny sizes, any machine
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's kvbench, before any installed one
sys.path.insert(1, str(Path(__file__).resolve().parent))  # gpu_parallel, beside this script

import torch  # noqa: E402
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM  # noqa: E402

import kvbench  # noqa: E402
from kvbench import generate, load_method  # noqa: E402
from kvbench.engine import cache_argument, score_continuation  # noqa: E402

# Llama-3.1-8B's and Mistral-7B's architectures, written out: no network.
LLAMA_31_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
)
MISTRAL_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=65536,
    sliding_window=4096,
    rope_theta=10000.0,
)
TINY_LLAMA = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
)
TINY_MISTRAL = dict(TINY_LLAMA, sliding_window=48)
SIZES = {  # lengths, chunk, logits case (prompt, chunk), sliding case (prompt, chunk), per-case seconds, sink/window
    False: dict(
        lengths=[32768, 131072],
        chunk=32768,
        logits=(8192, 2048),
        sliding=(65536, 32768),
        case_s=90,
        sink_window=(128, 1024),
    ),
    True: dict(lengths=[256, 512], chunk=128, logits=(200, 64), sliding=(300, 128), case_s=60, sink_window=(16, 64)),
}
KEEP, STREAMING_SHARE, CONTINUATION = 0.3, 0.7, 16


class CaseTimeout(Exception):
    """A case ran past its budget (raised by SIGALRM between the case's operations)."""


def build(config_class, model_class, settings: dict, device: torch.device):
    config = config_class(**settings)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # straight to bf16 on the device: an fp32 8B model would take 32 GB first
    try:
        with device:
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


class Check:
    """Runs the cases; each one's line is written as it ends."""

    def __init__(self, args, device: torch.device):
        self.args, self.device, self.began = args, device, time.perf_counter()
        self.sizes = SIZES[args.tiny]
        self.failed: list[str] = []
        self.out = Path(args.json) if args.json else None
        if self.out:
            self.out.write_text("")

    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync_time(self) -> float:
        if self.cuda():
            torch.cuda.synchronize()
        return time.perf_counter()

    def write(self, row: dict) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if self.out:
            with self.out.open("a") as f:
                f.write(line + "\n")

    def case(self, name: str, run, **row) -> dict | None:
        """Run one case in its own try and time budget; write its line whatever happens."""
        row = {"case": name, **row}
        left = self.args.budget_s - (time.perf_counter() - self.began)
        if left < 5:
            self.write(row | {"status": "skipped", "reason": f"past the {self.args.budget_s:.0f} s budget"})
            return None
        budget = max(1, int(min(self.sizes["case_s"], left)))
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(budget)
        started = time.perf_counter()
        try:
            result = run()
            row |= {"status": "ok", **result}
        except CaseTimeout:
            row |= {"status": "timed out", "reason": f"past its {budget} s budget"}
            self.failed.append(name)
        except Exception as error:  # noqa: BLE001 - one case's failure (OOM included) must not end the others
            row |= {
                "status": "failed",
                "error": f"{type(error).__name__}: {error}"[:2000],
                "where": traceback.format_exc().strip().splitlines()[-3:],
            }
            self.failed.append(name)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
            if self.cuda():
                torch.cuda.empty_cache()
        row["wall_s"] = round(time.perf_counter() - started, 2)
        self.write(row)
        return row

    # ---- what the cases run ----

    def hf_prefill(self, model, ids) -> dict:
        """The plain model's prefill in one forward (its own sdpa attention), into a DynamicCache."""
        if self.cuda():
            torch.cuda.reset_peak_memory_stats(self.device)
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            start = self.sync_time()
            model(input_ids=ids[None], use_cache=True, logits_to_keep=1, **{cache_argument(model): cache})
            seconds = self.sync_time() - start
        peak = torch.cuda.max_memory_allocated(self.device) if self.cuda() else None
        kv = sum(t.untyped_storage().nbytes() for layer in cache.layers for t in (layer.keys, layer.values))
        del cache
        return {"prefill_s": round(seconds, 3), "allocator_peak_bytes": peak, "kv_bytes": kv}

    def kvbench_prefill(self, model, ids, method: str, params: dict, chunk: int) -> dict:
        """kvbench.generate with one new token: the prefill under `method`, its ledger and the allocator's peak."""
        start = self.sync_time()
        result = generate(
            model, ids, load_method(method, **params), chunk_size=chunk, max_new_tokens=1, eos_token_id=[]
        )
        seconds = self.sync_time() - start
        stats = result.stats
        return {
            "prefill_s": round(seconds, 3),
            "kv_footprint": round(stats.kv_footprint, 4),
            "kv_peak_bytes": stats.kv_peak_bytes,
            "kv_transient_peak_bytes": stats.kv_transient_peak_bytes,
            "allocator_peak_bytes": max(result.device_peak_bytes.values(), default=None),
        }

    def logprob_difference(self, model, ids, continuation, chunk: int) -> dict:
        """Teacher-forced log-probabilities of `continuation` after `ids`: kvbench full (chunked) against the plain
        model in one forward. Greedy tokens of random weights near-tie; log-probabilities do not."""
        ours = score_continuation(model, ids, continuation, chunk_size=chunk).token_logprobs
        with torch.inference_mode():
            logits = (
                model(
                    input_ids=torch.cat([ids, continuation[:-1]])[None],
                    use_cache=False,
                    logits_to_keep=len(continuation),
                )
                .logits[0]
                .float()
            )
        theirs = logits.log_softmax(-1).gather(1, continuation[:, None])[:, 0].tolist()
        worst = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
        if worst > self.args.logprob_tolerance:
            raise AssertionError(
                f"kvbench's log-probabilities differ from the plain model's by {worst:.4f} "
                f"(tolerance {self.args.logprob_tolerance})"
            )
        return {"max_logprob_difference": round(worst, 5), "tokens_scored": len(continuation)}


def _alarm(signum, frame):
    raise CaseTimeout


def tokens(count: int, vocab: int, seed: int, device) -> torch.Tensor:
    return torch.randint(0, vocab, (count,), generator=torch.Generator().manual_seed(seed)).to(device)


def write_pattern(config, directory: Path) -> str:
    """DuoAttention gates for every (layer, KV head): random, seeded (no trained pattern offline)."""
    gates = torch.rand(config.num_hidden_layers, config.num_key_value_heads, generator=torch.Generator().manual_seed(0))
    path = directory / "duo_gates.tsv"
    path.write_text("\n".join("\t".join(f"{g:.5f}" for g in row) for row in gates.tolist()) + "\n")
    return str(path)


def llama_cases(check: Check, tiny: bool, device: torch.device) -> None:
    """The cases on the Llama-3.1-8B architecture: log-probabilities against the plain model, then each length's
    plain prefill and the four methods' chunked prefill."""
    sizes = check.sizes
    model = build(LlamaConfig, LlamaForCausalLM, TINY_LLAMA if tiny else LLAMA_31_8B, device)
    weights = torch.cuda.memory_allocated(device) if check.cuda() else None
    vocab = model.config.vocab_size
    prompt, chunk = sizes["logits"]
    check.case(
        "logits_vs_hf",
        lambda: check.logprob_difference(
            model, tokens(prompt, vocab, 1, device), tokens(CONTINUATION, vocab, 2, device), chunk
        ),
        tokens=prompt,
        chunk_size=chunk,
    )
    workdir = Path(tempfile.mkdtemp(prefix="kvbench-gpu-check-"))
    sink, window = sizes["sink_window"]
    methods = {
        "full": ("full", {}),
        "snapkv_patched": ("snapkv", {"keep": KEEP, "schedule": "patched"}),
        "duoattention": (
            "duoattention",
            {
                "pattern": write_pattern(model.config, workdir),
                "head_sparsity": STREAMING_SHARE,
                "sink": sink,
                "window": window,
            },
        ),
        "streamingllm": ("streamingllm", {"sink": sink, "window": window}),
    }
    for length in sizes["lengths"]:
        ids = tokens(length, vocab, length, device)
        hf = check.case("hf", lambda ids=ids: check.hf_prefill(model, ids), tokens=length, weights_bytes=weights)
        for name, (method, params) in methods.items():
            row = check.case(
                name,
                lambda method=method, params=params, ids=ids: check.kvbench_prefill(
                    model, ids, method, params, sizes["chunk"]
                ),
                tokens=length,
                chunk_size=sizes["chunk"],
                weights_bytes=weights,
            )
            if row and hf and row["status"] == hf["status"] == "ok":
                check.write(
                    {
                        "case": f"{name}_vs_hf",
                        "status": "ok",
                        "tokens": length,
                        "prefill_time_ratio": round(row["prefill_s"] / hf["prefill_s"], 3),
                    }
                )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tiny",
        action="store_true",
        default=os.environ.get("KVBENCH_GPU_CHECK_TINY") == "1",
        help="toy models and lengths (also KVBENCH_GPU_CHECK_TINY=1)",
    )
    parser.add_argument(
        "--budget-s", type=float, default=450.0, help="start no case after this (the shell's hard timeout is 480 s)"
    )
    parser.add_argument("--logprob-tolerance", type=float, default=0.05)
    parser.add_argument("--plant-failure", action="store_true", help="add a case that fails (to test the harness)")
    parser.add_argument("--json", default="gpu_check.jsonl", help="JSON lines, one per case, written as each ends")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.tiny and device.type != "cuda":
        parser.error("the full-size check needs a CUDA GPU; use --tiny (or KVBENCH_GPU_CHECK_TINY=1) elsewhere")
    check = Check(args, device)
    sizes = check.sizes
    check.write(
        {
            "case": "machine",
            "status": "ok",
            "tiny": args.tiny,
            "kvbench": kvbench.__version__,
            "kvbench_path": str(Path(kvbench.__file__).parent),
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name() if check.cuda() else f"CPU ({platform.machine()})",
        }
    )
    if args.plant_failure:
        check.case("planted_failure", lambda: 1 / 0)

    import gpu_parallel

    check.case("multi_gpu", gpu_parallel.run)
    llama_cases(check, args.tiny, device)  # the 8B model is freed when they end
    if check.cuda():
        torch.cuda.empty_cache()

    def sliding() -> dict:
        model = build(MistralConfig, MistralForCausalLM, TINY_MISTRAL if args.tiny else MISTRAL_7B, device)
        length, window_chunk = sizes["sliding"]
        ids = tokens(length, model.config.vocab_size, 3, device)
        figures = check.kvbench_prefill(model, ids, "full", {}, window_chunk)
        figures["hf_prefill_s"] = check.hf_prefill(model, ids)["prefill_s"]
        figures |= check.logprob_difference(
            model, ids[: length - CONTINUATION], ids[length - CONTINUATION :], window_chunk
        )
        return figures | {"sliding_window": model.config.sliding_window}

    check.case("sliding_window", sliding, tokens=sizes["sliding"][0], chunk_size=sizes["sliding"][1])
    summary = {
        "case": "summary",
        "status": "failed" if check.failed else "ok",
        "failed": check.failed,
        "wall_s": round(time.perf_counter() - check.began, 1),
    }
    check.write(summary)
    if check.failed:
        print(f"gpu check: {len(check.failed)} case(s) failed: {', '.join(check.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
