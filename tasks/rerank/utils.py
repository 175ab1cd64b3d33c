"""Dataset builders of the rerank tasks (lm-eval calls them with the merged metadata and model_args)."""

from kvbench.data import helmet, synth
from kvbench.data.results import process_results  # noqa: F401  (named by _template_yaml)


def msmarco_rerank(**settings):
    return helmet.build("msmarco_rerank", **settings)


def synth_rerank(**settings):
    return synth.build("synth_rerank", **settings)
