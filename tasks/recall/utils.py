"""Dataset builders of the recall tasks (lm-eval calls them with the merged metadata and model_args)."""

from kvbench.data import recall, synth
from kvbench.data.results import process_results  # noqa: F401  (named by _template_yaml)


def json_kv(**settings):
    return recall.build("json_kv", **settings)


def ruler_mk_needle(**settings):
    return recall.build("ruler_mk_needle", **settings)


def ruler_mk_uuid(**settings):
    return recall.build("ruler_mk_uuid", **settings)


def ruler_mv(**settings):
    return recall.build("ruler_mv", **settings)


def synth_recall(**settings):
    return synth.build("synth_recall", **settings)
