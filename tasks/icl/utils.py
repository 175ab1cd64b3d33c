"""Dataset builders of the icl tasks (lm-eval calls them with the merged metadata and model_args)."""

from kvbench.data import helmet, synth
from kvbench.data.results import process_results, trace_points  # noqa: F401  (named by the YAMLs)


def icl_trec_coarse(**settings):
    return helmet.build("icl_trec_coarse", **settings)


def icl_trec_fine(**settings):
    return helmet.build("icl_trec_fine", **settings)


def icl_nlu(**settings):
    return helmet.build("icl_nlu", **settings)


def icl_banking77(**settings):
    return helmet.build("icl_banking77", **settings)


def icl_clinc150(**settings):
    return helmet.build("icl_clinc150", **settings)


def synth_icl(**settings):
    return synth.build("synth_icl", **settings)
