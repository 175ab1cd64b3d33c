"""Deprecated (kvbench 0.1): `kvbench demo` lives in kvbench/demo.py, at the top of the house beside the CLI (it
drives sweeps); kvbench/tiny/ holds the bundled model. This alias goes in the next release."""

import warnings

from kvbench.demo import *  # noqa: F403
from kvbench.demo import TASKS, config, estimate_seconds, run  # noqa: F401

warnings.warn("kvbench.tiny.demo is deprecated; import kvbench.demo", DeprecationWarning, stacklevel=2)
