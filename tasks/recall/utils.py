"""Dataset builders of the recall tasks (lm-eval calls them with the merged metadata and model_args)."""

from kvbench.data import recall, ruler, synth
from kvbench.data.results import process_results, trace_points  # noqa: F401  (named by the YAMLs)


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


def synth_recall_multi(**settings):
    return synth.build("synth_recall_multi", **settings)


# Generated variants (kvbench.data.ruler): their own tasks, never a stand-in for HELMET's files.
def gen_json_kv(**settings):
    return ruler.build("gen_json_kv", **settings)


def gen_ruler_mk_needle(**settings):
    return ruler.build("gen_ruler_mk_needle", **settings)


def gen_ruler_mk_uuid(**settings):
    return ruler.build("gen_ruler_mk_uuid", **settings)


def gen_ruler_mv(**settings):
    return ruler.build("gen_ruler_mv", **settings)
