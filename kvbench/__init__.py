"""kvbench: how many KVs does a long-context model really need? Measured, not assumed."""

from kvbench.engine import Generation, generate, generate_many
from kvbench.method import KeepView, Method, ModelShape, Phase, ScoreMethod
from kvbench.plugins import hookimpl, list_methods, load_method

__version__ = "0.1.0"

__all__ = [
    "Generation",
    "KeepView",
    "Method",
    "ModelShape",
    "Phase",
    "ScoreMethod",
    "generate",
    "generate_many",
    "hookimpl",
    "list_methods",
    "load_method",
    "__version__",
]
