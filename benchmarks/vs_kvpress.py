"""kvbench side by side with kvpress (NVIDIA) on CPU: speed, the KV memory really held, and what SnapKV keeps.

kvpress pins its own transformers, so it runs in its own virtual environment (created on first use in
benchmarks/.kvpress-venv, git-ignored) behind a small worker process (benchmarks/kvpress_worker.py);
kvbench runs here. Both load the same random-weight Llama, saved once with save_pretrained to a temp
dir, and get the same prompts. Requests alternate between the two processes, repeat by repeat, so
machine drift hits both sides alike; only one side computes at a time, with the same thread count.

Measured per prompt length (4K-16K tokens):
1. SnapKV at keep 0.25 (kvpress SnapKVPress(compression_ratio=0.75); kvbench snapkv post-fill and chunked):
   wall time of prefill + 32 new tokens relative to each library's own full attention and to each other;
   physical KV bytes after the prompt; peak KV bytes.
2. Per-head budgets (kvpress DuoAttentionPress and AdaKVPress against kvbench duoattention, same gates and
   share of streaming heads): physical KV bytes after the prompt, and the entries each says it dropped.
3. Overlap of the entries kvbench's post-fill snapkv and kvpress's SnapKVPress keep, settings matched.

    python benchmarks/vs_kvpress.py [--lengths 4096 8192 16384] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import transformers
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from kvbench import generate, load_method
from kvbench.cache import KVCache
from kvbench.engine import cache_argument, kvbench_attention, prefill
from kvbench.method import ModelShape

HERE = Path(__file__).resolve().parent
VENV = HERE / ".kvpress-venv"
KVPRESS_REQUIREMENT = "kvpress>=0.5,<0.6"
NEW_TOKENS = 32
KEEP = 0.25  # kvbench keep; kvpress compression_ratio = 1 - KEEP
WINDOW, KERNEL = 64, 5  # SnapKV's observation window and pooling kernel: both libraries' defaults
DUO = {"share": 0.5, "sink": 64, "recent": 256}  # DuoAttention's released sink/recent sizes


def kvpress_python(venv: Path = VENV) -> Path:
    """The kvpress environment's python, created on first use: the CPU torch build first (so that pip does
    not fetch a multi-GB CUDA build for kvpress's torch requirement), then kvpress, letting pip pick the
    transformers it pins."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import kvpress"], capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} (kvpress and its pinned transformers) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + [f"torch=={torch.__version__.split('+')[0]}"], check=True)
    subprocess.run(pip + [KVPRESS_REQUIREMENT], check=True)
    return python


class Worker:
    """The kvpress process: one JSON request per line in, one JSON answer per line out."""

    def __init__(self, python: Path):
        self.process = subprocess.Popen(
            [str(python), str(HERE / "kvpress_worker.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the kvpress worker died (its stderr is above)")
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise RuntimeError(f"kvpress worker: {answer['error']}\n{answer.get('trace', '')}")
        return answer

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def save_model(directory: Path) -> None:
    """A small GQA Llama with random weights (fp32, sdpa), saved for both libraries to load."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        attn_implementation="sdpa",
    )
    LlamaForCausalLM(config).save_pretrained(directory)


def hf_run(model, ids) -> float:
    """The plain model here (transformers of kvbench's env): the same loop as the kvpress worker's full run."""
    cache, name = DynamicCache(config=model.config), cache_argument(model)
    start = time.perf_counter()
    with torch.inference_mode():
        token = model(input_ids=ids[None], logits_to_keep=1, **{name: cache}).logits[0, -1].argmax()
        for step in range(NEW_TOKENS - 1):
            position = torch.tensor([[len(ids) + step]])
            token = model(input_ids=token.view(1, 1), position_ids=position, **{name: cache}).logits[0, -1].argmax()
    return time.perf_counter() - start


def kvbench_methods(pattern: str, length: int, chunk: int) -> dict:
    """name: (method name, params, chunk size). Post-fill, full and duo run the prompt in one chunk, as kvpress does."""
    return {
        "full": ("full", {}, length),
        "snapkv_postfill": (
            "snapkv",
            {"keep": KEEP, "schedule": "postfill", "obs_window": WINDOW, "kernel": KERNEL},
            length,
        ),
        "snapkv_chunked": (
            "snapkv",
            {"keep": KEEP, "schedule": "chunked", "obs_window": WINDOW, "kernel": KERNEL},
            chunk,
        ),
        "duoattention": (
            "duoattention",
            {"pattern": pattern, "head_sparsity": DUO["share"], "sink": DUO["sink"], "window": DUO["recent"]},
            length,
        ),
    }


def kvbench_prefill(model, ids, name, params, chunk, tokenizer=None) -> KVCache:
    """The cache as it stands after the prompt (what generate() runs first), to read its bytes and positions."""
    method = load_method(name, **params)
    shape = ModelShape.from_config(model.config)
    method.bind(shape)
    cache = KVCache(shape, method)
    with kvbench_attention(model), torch.inference_mode():
        prefill(model, cache, ids, chunk, tokenizer=tokenizer)
    return cache


def kept_positions_kvpress(full_keys, kept_keys) -> list[torch.Tensor]:
    """Positions of the entries a kvpress cache holds, found by matching its keys bit-for-bit against the full
    cache's keys of the same worker run (kvpress stores no positions; keys are unique vectors under random weights)."""
    found = []
    for full, kept in zip(full_keys, kept_keys):  # per layer: [h, T, d] and [h, n, d]
        heads = []
        for h in range(full.shape[0]):
            index = {row.numpy().tobytes(): i for i, row in enumerate(full[h])}
            positions = [index.get(row.numpy().tobytes()) for row in kept[h]]
            if None in positions or len(set(positions)) != len(positions):
                raise RuntimeError("could not match kvpress's kept keys to the full cache's")
            heads.append(torch.tensor(sorted(positions)))
        found.append(torch.stack(heads))
    return found


def overlap(model, ids, worker, workdir: Path) -> dict:
    """kvbench post-fill snapkv vs kvpress SnapKVPress on one prompt, settings matched.

    kvpress keeps int(T * (1 - ratio)) entries per head, its 64-entry window included; kvbench's `budget` is
    the same count (its `recent` window included), all held entries competing. Window 64, kernel 5, scores
    averaged over the window's queries and over the query heads of each KV head, in both.
    """
    length = len(ids)
    ids_file = workdir / f"ids_{length}.pt"
    budget = max(1, int(length * KEEP))
    full_out, kept_out = workdir / "full_keys.pt", workdir / "kept_keys.pt"
    worker.ask(op="run", case="full", ids=str(ids_file), new_tokens=1, kept_out=str(full_out))
    worker.ask(
        op="run",
        case="snapkv",
        ids=str(ids_file),
        new_tokens=1,
        kept_out=str(kept_out),
        compression_ratio=1 - KEEP,
        window=WINDOW,
        kernel=KERNEL,
    )
    theirs = kept_positions_kvpress(torch.load(full_out), torch.load(kept_out))
    params = {"budget": budget, "recent": WINDOW, "obs_window": WINDOW, "kernel": KERNEL, "schedule": "postfill"}
    cache = kvbench_prefill(model, ids, "snapkv", params, length)
    ours = [layer.groups[0].positions for layer in cache.layers]
    shares, near_window, differing = [], 0, 0
    window_start = length - WINDOW
    for mine, other in zip(ours, theirs):
        for a, b in zip(mine, other):
            assert len(a) == len(b) == budget
            a_set, b_set = set(a.tolist()), set(b.tolist())
            shares.append(len(a_set & b_set) / budget)
            only = a_set ^ b_set
            differing += len(only)
            # kvbench pools scores over all held entries, so the kernel's reach (kernel // 2 entries) before the
            # window sees the window's scores; kvpress pools the pre-window scores alone, zero-padded.
            near_window += sum(1 for p in only if window_start - KERNEL // 2 <= p < window_start)
    return {
        "tokens": length,
        "kept_per_head": budget,
        "overlap_mean": round(statistics.mean(shares), 4),
        "overlap_min": round(min(shares), 4),
        "differing_entries": differing,
        "differing_within_kernel_of_window": near_window,
        "heads": len(shares),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=2048, help="kvbench snapkv chunked")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same on both sides")
    parser.add_argument("--json", default="vs_kvpress.json")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: torch.profiler of kvbench full vs the plain model at the first length",
    )
    args = parser.parse_args()
    if args.profile:
        return profile(args.lengths[0], args.threads)

    python = kvpress_python()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="kvbench-vs-kvpress-"))
    save_model(workdir / "model")
    model = LlamaForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32).eval()
    gates = torch.rand(
        model.config.num_hidden_layers, model.config.num_key_value_heads, generator=torch.Generator().manual_seed(0)
    )
    pattern = workdir / "gates.tsv"
    pattern.write_text("\n".join("\t".join(f"{g:.5f}" for g in row) for row in gates.tolist()) + "\n")
    worker = Worker(python)
    versions = worker.ask(op="load", model=str(workdir / "model"), threads=args.threads)
    duo_request = {"gates": str(pattern), **DUO}
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {args.threads} torch thread(s) per side, {platform.system()}",
        "kvbench_side": {"torch": torch.__version__, "transformers": transformers.__version__},
        "kvpress_side": versions,
        "model": "Llama, 4 layers, hidden 256, 8 query / 2 KV heads, head_dim 32, random fp32 weights",
        "new_tokens": NEW_TOKENS,
        "keep": KEEP,
        "chunk_size_chunked": args.chunk_size,
        "timing": [],
        "memory": [],
        "overlap": [],  # memory holds the per-head-budget cases too
    }
    for length in args.lengths:
        ids = torch.randint(0, model.config.vocab_size, (length,), generator=torch.Generator().manual_seed(length))
        ids_file = workdir / f"ids_{length}.pt"
        torch.save(ids, ids_file)
        ours = kvbench_methods(str(pattern), length, args.chunk_size)

        def kvbench_case(name):
            method, params, chunk = ours[name]
            start = time.perf_counter()
            result = generate(
                model, ids, load_method(method, **params), chunk_size=chunk, max_new_tokens=NEW_TOKENS, eos_token_id=[]
            )
            return time.perf_counter() - start, result

        def kvpress_case(case, **extra):
            answer = worker.ask(op="run", case=case, ids=str(ids_file), new_tokens=NEW_TOKENS, **extra)
            return answer["total_s"], answer

        cases = {
            "kvpress_full": lambda: kvpress_case("full"),
            "kvpress_snapkv": lambda: kvpress_case("snapkv", compression_ratio=1 - KEEP),
            "hf": lambda: (hf_run(model, ids), None),
            "kvbench_full": lambda: kvbench_case("full"),
            "kvbench_snapkv_postfill": lambda: kvbench_case("snapkv_postfill"),
            "kvbench_snapkv_chunked": lambda: kvbench_case("snapkv_chunked"),
        }
        for fn in (cases["kvpress_full"], cases["kvbench_full"]):  # warm-up, both sides
            fn()
        times = {name: [] for name in cases}
        stats = {}
        for _ in range(args.repeats):
            for name, fn in cases.items():
                seconds, result = fn()
                times[name].append(seconds)
                if name.startswith("kvbench"):
                    stats[name] = result.stats
        t = {name: statistics.median(v) for name, v in times.items()}
        row = {"tokens": length, **{f"{k}_s": round(v, 3) for k, v in t.items()}}
        row |= {
            "kvpress_snapkv_vs_kvpress_full": round(t["kvpress_snapkv"] / t["kvpress_full"], 3),
            "kvbench_postfill_vs_kvbench_full": round(t["kvbench_snapkv_postfill"] / t["kvbench_full"], 3),
            "kvbench_chunked_vs_kvbench_full": round(t["kvbench_snapkv_chunked"] / t["kvbench_full"], 3),
            "kvbench_postfill_vs_kvpress_snapkv": round(t["kvbench_snapkv_postfill"] / t["kvpress_snapkv"], 3),
            "kvbench_chunked_vs_kvpress_snapkv": round(t["kvbench_snapkv_chunked"] / t["kvpress_snapkv"], 3),
            "kvbench_full_vs_kvpress_full": round(t["kvbench_full"] / t["kvpress_full"], 3),
            "kvbench_full_vs_hf": round(t["kvbench_full"] / t["hf"], 3),
            "hf_vs_kvpress_full": round(t["hf"] / t["kvpress_full"], 3),
            "spread": {k: round((max(v) - min(v)) / statistics.median(v), 3) for k, v in times.items()},
        }
        report["timing"].append(row)
        print(json.dumps(row), flush=True)

        # Memory: kvpress with its cache measured by forward hooks (after each layer's append, before the
        # press compresses); kvbench from its ledger and from the cache after prefill.
        memory = {"tokens": length}
        for case, extra in (
            ("full", {}),
            ("snapkv", {"compression_ratio": 1 - KEEP}),
            ("duo", {"duo": duo_request}),
            ("adakv", {"compression_ratio": 1 - KEEP}),
        ):
            answer = worker.ask(op="run", case=case, ids=str(ids_file), new_tokens=NEW_TOKENS, memory=True, **extra)
            memory[f"kvpress_{case}"] = {
                k: answer[k] for k in ("kv_bytes_after_prompt", "kv_peak_bytes", "held_entries", "masked_entries")
            }
        for name in ("full", "snapkv_postfill", "snapkv_chunked", "duoattention"):
            method, params, chunk = ours[name]
            cache = kvbench_prefill(model, ids, method, params, chunk)
            if name == "duoattention":
                peak = generate(
                    model,
                    ids,
                    load_method(method, **params),
                    chunk_size=chunk,
                    max_new_tokens=NEW_TOKENS,
                    eos_token_id=[],
                ).stats.kv_peak_bytes
            else:
                peak = stats[f"kvbench_{name}"].kv_peak_bytes
            memory[f"kvbench_{name}"] = {
                "kv_bytes_after_prompt": cache.nbytes,
                "kv_peak_bytes": peak,
                "held_entries": cache.num_held,
                "masked_entries": 0,
            }
        full_bytes = memory["kvbench_full"]["kv_bytes_after_prompt"]
        assert memory["kvpress_full"]["kv_bytes_after_prompt"] == full_bytes, "the two full caches differ in size"
        for key, value in memory.items():
            if key != "tokens":
                value["after_prompt_vs_full"] = round(value["kv_bytes_after_prompt"] / full_bytes, 4)
                value["peak_vs_full"] = round(value["kv_peak_bytes"] / full_bytes, 4)
                entries = value["held_entries"] - value["masked_entries"]  # what attention really sees
                value["attended_vs_full"] = round(entries / memory["kvbench_full"]["held_entries"], 4)
        report["memory"].append(memory)
        print(json.dumps(memory), flush=True)
        Path(args.json).write_text(json.dumps(report, indent=1))  # so far: a late failure keeps the figures

    for length in args.lengths:
        report["overlap"].append(overlap(model, torch.load(workdir / f"ids_{length}.pt"), worker, workdir))
        print(json.dumps(report["overlap"][-1]), flush=True)
    worker.close()
    Path(args.json).write_text(json.dumps(report, indent=1))
    print_table(report)


def profile(length: int, threads: int) -> None:
    """Where the time goes: kvbench `full` and post-fill `snapkv` (generate) against the plain model's loop,
    same prompt, same model.
    Prints the top operators by self CPU time, and the total, for each (after one warm-up run of each)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(threads)
    workdir = Path(tempfile.mkdtemp(prefix="kvbench-profile-"))
    save_model(workdir / "model")
    model = LlamaForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (length,), generator=torch.Generator().manual_seed(length))
    runs = {
        "hf": lambda: hf_run(model, ids),
        "kvbench_full": lambda: generate(
            model, ids, load_method("full"), chunk_size=length, max_new_tokens=NEW_TOKENS, eos_token_id=[]
        ),
        "kvbench_snapkv_postfill": lambda: generate(
            model,
            ids,
            load_method("snapkv", keep=KEEP, schedule="postfill"),
            chunk_size=length,
            max_new_tokens=NEW_TOKENS,
            eos_token_id=[],
        ),
    }
    for name, fn in runs.items():
        fn()  # warm-up
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            fn()
            wall = time.perf_counter() - start
        print(f"\n== {name}: {wall:.3f} s wall ({length} tokens + {NEW_TOKENS} new, under the profiler)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def print_table(report: dict) -> None:
    print(
        f"\n{report['machine']}; kvpress {report['kvpress_side'].get('kvpress')} (transformers "
        f"{report['kvpress_side']['transformers']}), kvbench side transformers {report['kvbench_side']['transformers']}"
    )
    print("\nwall time, prefill + 32 new tokens, relative (median of repeats, one run)")
    print(
        f"{'tokens':>7} {'kvpress snap/full':>17} {'kvb post/full':>13} {'kvb chunk/full':>14} "
        f"{'kvb post/kvp snap':>17} {'kvb chunk/kvp snap':>18} {'kvb full/kvp full':>17} {'kvb full/hf':>11}"
    )
    for r in report["timing"]:
        print(
            f"{r['tokens']:>7} {r['kvpress_snapkv_vs_kvpress_full']:>17} {r['kvbench_postfill_vs_kvbench_full']:>13} "
            f"{r['kvbench_chunked_vs_kvbench_full']:>14} {r['kvbench_postfill_vs_kvpress_snapkv']:>17} "
            f"{r['kvbench_chunked_vs_kvpress_snapkv']:>18} {r['kvbench_full_vs_kvpress_full']:>17} "
            f"{r['kvbench_full_vs_hf']:>11}"
        )
    print("\nKV memory relative to full attention: physical bytes after the prompt / peak / entries attention sees")
    for m in report["memory"]:
        print(f"  {m['tokens']} tokens")
        for key, v in m.items():
            if key != "tokens":
                print(f"    {key:<26} {v['after_prompt_vs_full']:>7} {v['peak_vs_full']:>7} {v['attended_vs_full']:>7}")
    for o in report["overlap"]:
        print(
            f"\nSnapKV kept-entry overlap at {o['tokens']} tokens ({o['kept_per_head']} per head, {o['heads']} heads): "
            f"mean {o['overlap_mean']}, min {o['overlap_min']}; {o['differing_entries']} differing entries, "
            f"{o['differing_within_kernel_of_window']} of them within the kernel's reach of the window"
        )


if __name__ == "__main__":
    main()
