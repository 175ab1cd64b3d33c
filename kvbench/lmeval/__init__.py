"""kvbench inside lm-evaluation-harness: the `kvbench` model backend and the hook that lets plain `lm_eval` see it.

    lm_eval --model kvbench --model_args pretrained=PATH,method=streamingllm,window=1024 --tasks ...

`backend.KVBenchLM` answers lm-eval's requests through the kvbench engine and reports the measured
KV footprint per task in the results JSON (`results["config"]["kvbench"]`); `hook` is installed as a
`.pth` import hook so that no flag is needed. This package itself is imported only when lm-eval
materialises the backend.
"""

from kvbench.lmeval.hook import task_folders

__all__ = ["task_folders"]
