"""Agreement of kvbench's methods with NVIDIA kvpress's presses: which entries each keeps, settings matched.

On one random-weight Llama (benchmarks/vs_kvpress.py's: 4 layers, 8 query / 2 KV heads, fp32) and the same random
prompts, every pair below prefills the whole prompt in one chunk and evicts once after it (kvbench's post-fill
schedule; kvpress's presses compress the context at prefill, and here the whole prompt is the context). kvpress's
kept entries are found by matching its compressed cache's keys bit-for-bit against the full cache's keys of the same
worker (`vs_kvpress.kept_positions_kvpress`); AdaKVPress evicts nothing but masks, so its kept set is every position
less the (head, position) pairs in its `masked_key_indices`, read after the prompt. kvbench's kept set is the held
positions of each KV head (Ada-KV: one head group per KV head).

Per pair and prompt length: per layer and KV head, overlap = |kvbench ∩ kvpress| / |kvpress|; its mean and min over
the 4 x 2 heads, the entries each side keeps per head (mean), and the entries only one side keeps. SimLayerKV
decides per layer: its thresholds are put between the layers' own attention shares (midpoints, as kvbench measures
them), so that every possible count of lazy layers is tried, and the layers each finds lazy are compared.

Budgets: kvpress keeps n_kept = int(T * (1 - compression_ratio)) per head (its window included); kvbench's `budget`
is that count, its `recent` window inside it (recent 64 where kvpress has a 64-entry window, 0 where it has none).

    .venv/bin/python benchmarks/kvpress_agreement.py [--lengths 1024 2048] [--json benchmarks/results/kvpress_agreement.json]

The kvpress side runs in benchmarks/.kvpress-venv (created on first use by vs_kvpress.kvpress_python()); the kvbench
side imports the checkout's kvbench (the repository root first on sys.path), whatever copy .venv has installed.
A pair whose kvbench method does not exist (or refuses the parameters) is reported as not available.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch
import transformers
from transformers import LlamaForCausalLM

# The checkout's kvbench, not a (non-editable) install's older copy: this script checks the methods being written.
sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]
from vs_kvpress import Worker, kept_positions_kvpress, kvbench_prefill, kvpress_python, save_model  # noqa: E402

import kvbench  # noqa: E402

HERE = Path(__file__).resolve().parent
RATIO = 0.75  # kvpress compression_ratio; kvbench budget = int(T * (1 - RATIO))
WINDOW, KERNEL = 64, 5  # SnapKV's window and pooling kernel (both libraries' defaults)
SNAP = {"obs_window": WINDOW, "kernel": KERNEL, "recent": WINDOW}
SIMLAYER = {"n_last": 1, "n_recent": 256, "n_initial": 4}  # n_recent below the prompt so that a layer can be lazy
THINK_PRUNED = 0.5  # ThinK's share of key channels pruned


def pairs(budget: int) -> dict:
    """name: (kvbench method, its params, kvpress worker case, extra request fields). Post-fill, the budget matched."""
    post = {"budget": budget, "schedule": "postfill"}
    return {
        "snapkv": ("snapkv", {**post, **SNAP}, "snapkv", {"window": WINDOW, "kernel": KERNEL}),
        "keydiff": ("keydiff", {**post, "recent": 0}, "keydiff", {}),
        "lagkv": (
            "lagkv",
            {**post, "recent": 0, "n_sink": 4, "lag_size": 128},
            "lagkv",
            {"params": {"n_sink": 4, "lag_size": 128}},
        ),
        "expected_attention": (
            "expected_attention",
            {**post, "recent": 0, "n_future_positions": 512, "n_sink": 4, "use_covariance": True, "use_vnorm": True},
            "expected_attention",
            {"params": {"n_future_positions": 512, "n_sink": 4, "use_covariance": True, "use_vnorm": True}},
        ),
        "adakv(snapkv)": (
            "adakv",
            {**post, **SNAP, "scorer": "snapkv", "alpha_safeguard": 0.2},
            "adakv",
            {"window": WINDOW, "kernel": KERNEL, "params": {"alpha_safeguard": 0.2}},
        ),
        "kvzip": ("kvzip", {"keep": 1 - RATIO, "n_sink": 4}, "kvzip", {"params": {"n_sink": 4}}),
        "chunkkv(snapkv)": (
            "chunkkv",
            {**post, **SNAP, "scorer": "snapkv", "chunk_length": 20},
            "chunkkv",
            {"window": WINDOW, "kernel": KERNEL, "params": {"chunk_length": 20}},
        ),
    }


def kvbench_positions(cache) -> list[list[set[int]]]:
    """[layer][KV head] -> the positions kvbench holds after the prompt."""
    found = []
    for layer in cache.layers:
        heads = {}
        for group in layer.groups:
            for row, head in enumerate(group.heads):
                heads[head] = set(group.positions[row].tolist())
        found.append([heads[h] for h in sorted(heads)])
    return found


def kvpress_positions(worker, case: str, ids_file: Path, full_keys, workdir: Path, extra: dict):
    """[layer][KV head] -> the positions kvpress keeps (attends to) after the prompt, and the worker's answer."""
    kept_out, masks_out = workdir / "kept_keys.pt", workdir / "masks.pt"
    answer = worker.ask(
        op="run",
        case=case,
        ids=str(ids_file),
        new_tokens=1,
        compression_ratio=RATIO,
        kept_out=str(kept_out),
        masks_out=str(masks_out),
        **extra,
    )
    kept = kept_positions_kvpress(full_keys, torch.load(kept_out))
    masks = torch.load(masks_out)
    found = []
    for layer, pairs_masked in zip(kept, masks):
        heads = [set(row.tolist()) for row in layer]
        for head, position in pairs_masked.tolist():
            heads[head].discard(position)
        found.append(heads)
    return found, answer


def compare(ours, theirs) -> dict:
    shares, only_ours, only_theirs, kept_ours, kept_theirs = [], 0, 0, [], []
    per_head = []
    for layer, (mine, other) in enumerate(zip(ours, theirs)):
        for head, (a, b) in enumerate(zip(mine, other)):
            shares.append(len(a & b) / len(b))
            only_ours += len(a - b)
            only_theirs += len(b - a)
            kept_ours.append(len(a))
            kept_theirs.append(len(b))
            per_head.append({"layer": layer, "head": head, "ours": len(a), "theirs": len(b), "common": len(a & b)})
    return {
        "overlap_mean": round(statistics.mean(shares), 4),
        "overlap_min": round(min(shares), 4),
        "kept_per_head_ours": round(statistics.mean(kept_ours), 1),
        "kept_per_head_theirs": round(statistics.mean(kept_theirs), 1),
        "only_ours": only_ours,
        "only_theirs": only_theirs,
        "heads": len(shares),
        "per_head": per_head,
    }


def differing(ours, theirs) -> dict:
    """The entries one side keeps and the other not, per layer and head (for the investigation)."""
    out = {}
    for layer, (mine, other) in enumerate(zip(ours, theirs)):
        for head, (a, b) in enumerate(zip(mine, other)):
            if a != b:
                out[f"L{layer}H{head}"] = {"only_ours": sorted(a - b), "only_theirs": sorted(b - a)}
    return out


def run_pair(model, ids, ids_file, worker, full_keys, workdir, name, spec, tokenizer=None) -> dict:
    method, params, case, extra = spec
    row = {"pair": name, "tokens": len(ids), "kvbench": {"method": method, **params}, "kvpress_case": case, **extra}
    if method not in kvbench.list_methods():
        return {**row, "status": f"not available: kvbench has no method {method!r} yet"}
    try:
        cache = kvbench_prefill(model, ids, method, params, len(ids), tokenizer)
    except Exception as error:  # a method being written may refuse these parameters or fail: report, go on
        return {**row, "status": f"not available: kvbench {method}: {type(error).__name__}: {error}"}
    ours = kvbench_positions(cache)
    try:
        theirs, _ = kvpress_positions(worker, case, ids_file, full_keys, workdir, extra)
    except RuntimeError as error:
        return {**row, "status": f"kvpress failed: {str(error)[:400]}"}
    return {**row, "status": "ok", **compare(ours, theirs), "differing": differing(ours, theirs)}


def run_think(model, ids, ids_file, worker, workdir, tokenizer) -> dict:
    """ThinK prunes key channels, not entries: per layer and KV head, the channels kvbench keeps against those
    kvpress's ThinKPress leaves non-zero in its cache."""
    params = {"channel_keep": 1 - THINK_PRUNED, "window_size": 32}
    row = {"pair": "think", "tokens": len(ids), "kvbench": {"method": "think", **params}}
    if "think" not in kvbench.list_methods():
        return {**row, "status": "not available: kvbench has no method 'think' yet"}
    cache = kvbench_prefill(model, ids, "think", params, len(ids), tokenizer)
    ours = [[set(row.tolist()) for row in layer.groups[0].key_channels] for layer in cache.layers]
    kept_out = workdir / "think_keys.pt"
    worker.ask(
        op="run",
        case="think",
        ids=str(ids_file),
        new_tokens=1,
        kept_out=str(kept_out),
        params={"key_channel_compression_ratio": THINK_PRUNED, "window_size": 32},
    )
    theirs = [
        [set((head != 0).any(dim=0).nonzero().flatten().tolist()) for head in layer] for layer in torch.load(kept_out)
    ]
    return {**row, "status": "ok", **compare(ours, theirs), "differing": differing(ours, theirs)}


def run_simlayerkv(model, ids, ids_file, worker, full_keys, workdir) -> list[dict]:
    """Thresholds between the layers' shares (as kvbench measures them); per threshold, the lazy layers of each."""
    base = {"schedule": "postfill", **SIMLAYER}
    row = {"pair": "simlayerkv", "tokens": len(ids), "kvbench": {"method": "simlayerkv", **base}}
    if "simlayerkv" not in kvbench.list_methods():
        return [{**row, "status": "not available: kvbench has no method 'simlayerkv' yet"}]
    try:
        probe = kvbench_prefill(model, ids, "simlayerkv", {**base, "lazy_threshold": 1.0}, len(ids)).method
        shares = dict(sorted(probe.layer_shares.items()))
    except Exception as error:
        return [{**row, "status": f"not available: kvbench simlayerkv: {type(error).__name__}: {error}"}]
    ordered = sorted(shares.values())
    thresholds = [round((a + b) / 2, 6) for a, b in zip(ordered, ordered[1:])]
    rows = []
    for threshold in thresholds:
        cache = kvbench_prefill(model, ids, "simlayerkv", {**base, "lazy_threshold": threshold}, len(ids))
        ours = kvbench_positions(cache)
        try:
            theirs, answer = kvpress_positions(
                worker,
                "simlayerkv",
                ids_file,
                full_keys,
                workdir,
                {"params": {**SIMLAYER, "lazy_threshold": threshold}},
            )
        except RuntimeError as error:
            rows.append({**row, "lazy_threshold": threshold, "status": f"kvpress failed: {str(error)[:400]}"})
            continue
        lazy_theirs = sorted(i for i, r in enumerate(answer["layer_compression_ratios"]) if r > 0)
        theirs_shares = {int(k): v for k, v in answer["layer_shares"].items()}
        margin = min(abs(s - threshold) for s in shares.values())
        rows.append(
            {
                **row,
                "status": "ok",
                "lazy_threshold": threshold,
                "lazy_ours": sorted(cache.method.lazy_layers),
                "lazy_theirs": lazy_theirs,
                "same_lazy_layers": sorted(cache.method.lazy_layers) == lazy_theirs,
                "shares_ours": {k: round(v, 6) for k, v in shares.items()},
                "shares_theirs": {k: round(v, 6) for k, v in sorted(theirs_shares.items())},
                "closest_share_to_threshold": round(margin, 6),
                **compare(ours, theirs),
                "differing": differing(ours, theirs),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same on both sides")
    parser.add_argument("--pairs", nargs="+", help="only these pairs (names as in the table; simlayerkv too)")
    parser.add_argument("--json", default=str(HERE / "results" / "kvpress_agreement.json"))
    args = parser.parse_args()

    python = kvpress_python()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="kvbench-kvpress-agreement-"))
    save_model(workdir / "model")
    # KVzip words its repeat instruction with a tokenizer; both sides use the bundled tiny model's (305 tokens, all
    # inside the random model's vocabulary), saved beside the model where kvpress's AutoTokenizer finds it.
    from kvbench import tiny

    tokenizer = tiny.load()[1]
    tokenizer.save_pretrained(workdir / "model")
    model = LlamaForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32).eval()
    worker = Worker(python)
    versions = worker.ask(op="load", model=str(workdir / "model"), threads=args.threads)
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {args.threads} torch thread(s) per side, {platform.system()}",
        "kvbench_side": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "kvbench": str(Path(kvbench.__file__).parent),
        },
        "kvpress_side": versions,
        "model": "Llama, 4 layers, hidden 256, 8 query / 2 KV heads, head_dim 32, random fp32 weights",
        "compression_ratio": RATIO,
        "simlayerkv": SIMLAYER,
        "rows": [],
    }
    for length in args.lengths:
        ids = torch.randint(0, model.config.vocab_size, (length,), generator=torch.Generator().manual_seed(length))
        ids_file = workdir / f"ids_{length}.pt"
        torch.save(ids, ids_file)
        full_out = workdir / "full_keys.pt"
        worker.ask(op="run", case="full", ids=str(ids_file), new_tokens=1, kept_out=str(full_out))
        full_keys = torch.load(full_out)
        budget = int(length * (1 - RATIO))
        for name, spec in pairs(budget).items():
            if args.pairs and name not in args.pairs:
                continue
            row = run_pair(model, ids, ids_file, worker, full_keys, workdir, name, spec, tokenizer)
            report["rows"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("per_head", "differing")}), flush=True)
        if not args.pairs or "think" in args.pairs:
            row = run_think(model, ids, ids_file, worker, workdir, tokenizer)
            report["rows"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("per_head", "differing")}), flush=True)
        if not args.pairs or "simlayerkv" in args.pairs:
            for row in run_simlayerkv(model, ids, ids_file, worker, full_keys, workdir):
                report["rows"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in ("per_head", "differing")}), flush=True)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    worker.close()
    print_table(report)


def print_table(report: dict) -> None:
    print(
        f"\n{report['machine']}; kvpress {report['kvpress_side'].get('kvpress')} (transformers "
        f"{report['kvpress_side']['transformers']}), kvbench side transformers {report['kvbench_side']['transformers']}"
    )
    print(
        f"{'pair':<18} {'tokens':>6} {'kept/head ours':>14} {'theirs':>7} {'mean':>7} {'min':>7} "
        f"{'only ours':>9} {'only theirs':>11}  lazy layers (ours / theirs)"
    )
    for r in report["rows"]:
        if r["status"] != "ok":
            print(f"{r['pair']:<18} {r['tokens']:>6}  {r['status']}")
            continue
        lazy = ""
        if r["pair"] == "simlayerkv":
            lazy = f"  thr {r['lazy_threshold']}: {r['lazy_ours']} / {r['lazy_theirs']}"
        print(
            f"{r['pair']:<18} {r['tokens']:>6} {r['kept_per_head_ours']:>14} {r['kept_per_head_theirs']:>7} "
            f"{r['overlap_mean']:>7} {r['overlap_min']:>7} {r['only_ours']:>9} {r['only_theirs']:>11}{lazy}"
        )


if __name__ == "__main__":
    main()
