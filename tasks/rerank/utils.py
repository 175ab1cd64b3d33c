"""Dataset builders of the rerank tasks (lm-eval calls them with the merged metadata and model_args)."""

from kvbench.data import helmet, synth
from kvbench.data.results import process_results, trace_points  # noqa: F401  (named by the YAMLs)


def msmarco_rerank(**settings):
    return helmet.build("msmarco_rerank", **settings)


def synth_rerank(**settings):
    return synth.build("synth_rerank", **settings)
