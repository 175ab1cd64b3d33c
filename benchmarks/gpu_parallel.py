"""The multi-GPU part of benchmarks/gpu_check.sh: skipped, with a message, when fewer than 2 GPUs are visible.

- data parallel: `accelerate launch --multi_gpu --num_processes 2 -m lm_eval --model kvbench` on a small synthetic
  task gives the one-process run's scores and per-task footprint tallies;
- model parallel: `parallelize=True` spreads a model's layers over the GPUs; every layer's cache sits on its
  layer's GPU, and the footprint and greedy tokens equal the one-GPU run's.

A random-weight Llama (8 layers, hidden 512) with the bundled tiny model's tokenizer, saved to a temporary folder.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TASK = "kvbench_synth_recall"


def _save_model(folder: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from kvbench.tiny import MODEL_DIR

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _lm_eval(launcher: list[str], model: Path, out: Path, env: dict) -> tuple[dict, float]:
    args = [
        *launcher,
        "--model",
        "kvbench",
        "--model_args",
        f"pretrained={model},method=snapkv,keep=0.2,schedule=patched,chunk_size=256,dtype=bfloat16",
        "--tasks",
        TASK,
        "--metadata",
        json.dumps({"context_length": 1024, "num_samples": 9}),
        "--output_path",
        str(out),
    ]
    start = time.perf_counter()
    subprocess.run(args, check=True, env=env, capture_output=True, text=True, timeout=240)
    [results] = glob.glob(str(out / "*" / "results_*.json"))
    return json.loads(Path(results).read_text()), time.perf_counter() - start


def data_parallel(model: Path, workdir: Path) -> dict:
    bin_dir = Path(sys.executable).parent
    one, one_s = _lm_eval(
        [str(bin_dir / "lm_eval")],
        model,
        workdir / "one",
        {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")[:1]},
    )
    launch = [
        str(bin_dir / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "lm_eval",
    ]
    two, two_s = _lm_eval(launch, model, workdir / "two", dict(os.environ))
    tallies = [r["config"]["kvbench"]["tasks"][TASK] for r in (one, two)]
    return {
        "processes": two["config"]["kvbench"]["processes"],
        "seconds_one": round(one_s, 1),
        "seconds_two": round(two_s, 1),
        "score_one": one["results"][TASK]["score,none"],
        "score_two": two["results"][TASK]["score,none"],
        "same_tallies": all(
            abs(tallies[0][k] - tallies[1][k]) <= 1e-9 * max(1, abs(tallies[0][k])) for k in tallies[0]
        ),
    }


def model_parallel(model: Path) -> dict:
    from kvbench.cache import KVCache
    from kvbench.engine import kvbench_attention, prefill
    from kvbench.lmeval.backend import KVBenchLM
    from kvbench.method import ModelShape
    from kvbench.methods.snapkv import SnapKV

    split = KVBenchLM(pretrained=str(model), parallelize=True, dtype="bfloat16")
    whole = KVBenchLM(pretrained=str(model), device="cuda:0", dtype="bfloat16")
    devices = sorted({str(d) for d in split.model.hf_device_map.values()})
    prompt = torch.randint(0, split.model.config.vocab_size, (4096,), generator=torch.Generator().manual_seed(0))
    stats, placed = [], True
    for lm in (split, whole):
        method = SnapKV(keep=0.2, schedule="chunked")
        cache = KVCache(ModelShape.from_config(lm.model.config), method)
        method.bind(cache.shape)
        with kvbench_attention(lm.model), torch.inference_mode():
            prefill(lm.model, cache, prompt.to(lm.device), 1024)
        stats.append(cache.ledger.stats(len(prompt)))
        if lm is split:
            for index, layer in enumerate(cache.layers):
                device = lm.model.model.layers[index].self_attn.q_proj.weight.device
                placed &= all(g.keys.device == g.positions.device == device for g in layer.groups)
    return {
        "devices": devices,
        "caches_on_their_layers_devices": placed,
        "same_footprint": stats[0] == stats[1],
        "kv_peak_bytes": stats[0].kv_peak_bytes,
    }


def run() -> dict:
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < 2:
        return {"skipped": f"the multi-GPU checks need 2 visible GPUs; {visible} visible"}
    with tempfile.TemporaryDirectory(prefix="kvbench-gpu-parallel-") as tmp:
        model = _save_model(Path(tmp) / "model")
        return {"data_parallel": data_parallel(model, Path(tmp)), "model_parallel": model_parallel(model)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
