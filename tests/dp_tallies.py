"""Run by tests/test_parallel.py, alone or under `torchrun --nproc_per_node 2`: the kvbench backend answers some
requests (rank 0 alone gets the log-likelihood ones: the other process runs no request of that type), then every
process hands its tallies over once; rank 0 prints the per-task tallies as JSON."""

import json
import sys

from lm_eval.api.instance import Instance

from kvbench.lmeval.backend import KVBenchLM

lm = KVBenchLM(pretrained=sys.argv[1], method="snapkv", keep=0.3, recent=4, obs_window=4, chunk_size=16, device="cpu")
prompts = ["the quick brown fox jumps over the lazy dog " * n for n in (3, 5, 7, 9)]
generations = [
    Instance("generate_until", {}, (p, {"until": ["\n"], "max_gen_toks": 4}), i, ("gen", i, 1))
    for i, p in enumerate(prompts)
]
choices = [
    Instance("loglikelihood", {}, (prompts[2], f" {word}"), i, ("choice", 0, 1))
    for i, word in enumerate(("fox", "dog"))
]
lm.generate_until(generations[lm.rank :: lm.world_size])
if lm.rank == 0:
    lm.loglikelihood(choices)
lm.gather_tallies()
if lm.rank == 0:
    tasks = lm.get_model_info()["kvbench"]["tasks"]
    print(json.dumps({task: {k: v for k, v in tally.items()} for task, tally in tasks.items()}))
