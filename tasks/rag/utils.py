"""Dataset builders of the rag tasks (lm-eval calls them with the merged metadata and model_args)."""

from kvbench.data import helmet, synth
from kvbench.data.results import process_results, trace_points  # noqa: F401  (named by the YAMLs)


def kilt_nq(**settings):
    return helmet.build("kilt_nq", **settings)


def kilt_triviaqa(**settings):
    return helmet.build("kilt_triviaqa", **settings)


def kilt_popqa(**settings):
    return helmet.build("kilt_popqa", **settings)


def kilt_hotpotqa(**settings):
    return helmet.build("kilt_hotpotqa", **settings)


def synth_rag(**settings):
    return synth.build("synth_rag", **settings)
