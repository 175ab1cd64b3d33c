"""Beyond one process and one device: lm-eval's data-parallel launch (two CPU processes over gloo) gives the
single process's scores and footprint tallies; a model placed by a device map keeps each layer's cache on its
layer's device and measures the same footprint."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import save_tiny_checkpoint

from kvbench.cache import KVCache
from kvbench.engine import kvbench_attention, prefill
from kvbench.method import ModelShape
from kvbench.methods.snapkv import SnapKV

TASKS = Path(__file__).parent / "data" / "lmeval_tasks"
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def lm_eval(launcher: list[str], checkpoint, out: Path, *selection: str) -> dict:
    # 3 documents per task: two processes get 2 and 1, and lm-eval pads the second with a copy of its last request.
    args = [
        *launcher,
        "--model",
        "kvbench",
        "--model_args",
        f"pretrained={checkpoint},method=snapkv,keep=0.3,recent=4,obs_window=4,chunk_size=16",
        "--tasks",
        "kvbench_test_recall,kvbench_test_choice",
        "--include_path",
        str(TASKS),
        *(selection or ("--limit", "3")),
        "--output_path",
        str(out),
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    [results] = glob.glob(str(out / "*" / "results_*.json"))
    return json.loads(Path(results).read_text())


@pytest.mark.slow
def test_two_data_parallel_processes_give_the_single_process_results(checkpoint, tmp_path):
    single = lm_eval([str(BIN / "lm_eval")], checkpoint, tmp_path / "one")
    launch = [str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "lm_eval"]  # on GPUs: accelerate launch
    double = lm_eval(launch, checkpoint, tmp_path / "two")
    assert double["config"]["kvbench"]["processes"] == 2 and single["config"]["kvbench"]["processes"] == 1
    for task in ("kvbench_test_recall", "kvbench_test_choice"):
        scores = {k: v for k, v in single["results"][task].items() if "stderr" not in k}
        assert {k: double["results"][task][k] for k in scores} == pytest.approx(scores)
        one, two = single["config"]["kvbench"]["tasks"][task], double["config"]["kvbench"]["tasks"][task]
        assert two == pytest.approx(one)  # the padded copy ran but counts once: the same requests, the same means
    assert double["config"]["kvbench"]["requests"] == single["config"]["kvbench"]["requests"]


@pytest.mark.slow
def test_a_process_without_a_loglikelihood_request_still_hands_over_its_tallies(checkpoint):
    """Rank 0 alone runs log-likelihood requests; the other process runs none of that type. Tallies are handed to
    rank 0 once, after every request type, so both processes meet: the single process's tallies (before, each
    request type gathered apart and the second process never came to that gather)."""
    script = [str(Path(__file__).parent / "dp_tallies.py"), str(checkpoint)]
    runs = []
    for launcher in ([sys.executable], [str(BIN / "torchrun"), "--nproc_per_node", "2"]):
        done = subprocess.run([*launcher, *script], capture_output=True, text=True, env=ENV, timeout=240)
        assert done.returncode == 0, done.stderr[-4000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    single, double = runs
    assert single["choice"]["requests"] == 2 and single["gen"]["requests"] == 4
    assert double.keys() == single.keys()
    for task in single:
        assert double[task] == pytest.approx(single[task])


def test_a_device_map_keeps_each_layers_cache_on_its_device_and_the_footprint(checkpoint, monkeypatch):
    import transformers

    from kvbench.lmeval.backend import KVBenchLM

    # On CPU every device is "cpu" (transformers then places the model whole), but the map reaches from_pretrained
    # as it does on GPUs, and the cache follows each layer's device; benchmarks/gpu_check.py runs the real split.
    layers = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "cpu",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    loads = []
    load = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(k) or load(*a, **k)
    )
    split = KVBenchLM(pretrained=str(checkpoint), device_map=layers, max_cpu_memory="4GiB")
    whole = KVBenchLM(pretrained=str(checkpoint))
    assert loads[0]["device_map"] == layers and loads[0]["max_memory"] == {"cpu": "4GiB"}
    assert "device_map" not in loads[1]
    assert KVBenchLM(pretrained=str(checkpoint), parallelize="true") and loads[2]["device_map"] == "auto"
    prompt = torch.randint(0, split.model.config.vocab_size, (120,), generator=torch.Generator().manual_seed(0))
    caches = []
    for lm in (split, whole):
        method = SnapKV(keep=0.3, recent=4, obs_window=4)
        cache = KVCache(ModelShape.from_config(lm.model.config), method)
        method.bind(cache.shape)
        with kvbench_attention(lm.model), torch.inference_mode():
            prefill(lm.model, cache, prompt.to(lm.device), 32)
        caches.append(cache)
    for index, layer in enumerate(caches[0].layers):
        device = split.model.model.layers[index].self_attn.q_proj.weight.device
        for group in layer.groups:
            assert group.keys.device == group.positions.device == device
    assert caches[0].ledger.stats(120) == caches[1].ledger.stats(120)
    with pytest.raises(ValueError, match="parallelize must be true or false; got 'maybe'"):
        KVBenchLM(pretrained=str(checkpoint), parallelize="maybe")


@pytest.mark.slow
def test_a_data_parallel_sweep_writes_what_one_process_writes(checkpoint, tmp_path):
    """`torchrun --nproc_per_node N -m kvbench.cli sweep`: every cell run by all processes together, rank 0
    writing its results file; the figures equal a one-process sweep's."""
    import yaml

    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [str(checkpoint)],
                "methods": [{"name": "full"}, {"name": "streamingllm", "params": {"sink": 4}, "values": [16, 64]}],
                "tasks": ["kvbench_synth_recall"],
                "context_lengths": [1024],
                "chunk_sizes": [256],
                "metadata": {"num_samples": 3},
                "model_args": {"device": "cpu"},
            }
        )
    )
    figures = {}
    for name, launcher in (
        ("one", [sys.executable, "-m", "kvbench.cli"]),
        ("two", [str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "kvbench.cli"]),
    ):
        done = subprocess.run(
            [*launcher, "sweep", str(config), "--out", str(tmp_path / name)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=600,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        figures[name] = {}
        for path in sorted((tmp_path / name).glob("*/results.json")):
            data = json.loads(path.read_text())
            figures[name][path.parent.name] = (
                data["results"]["kvbench_synth_recall"]["score,none"],
                data["config"]["kvbench"]["tasks"]["kvbench_synth_recall"],
            )
    assert len(figures["one"]) == 3 and figures["two"].keys() == figures["one"].keys()
    for cell, (score, tally) in figures["one"].items():
        assert figures["two"][cell][0] == pytest.approx(score) and figures["two"][cell][1] == pytest.approx(tally)
