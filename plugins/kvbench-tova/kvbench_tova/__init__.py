"""kvbench plugin: registers the TOVA method through kvbench's `kvbench_methods` hook."""

import kvbench
from kvbench_tova.tova import Tova


@kvbench.hookimpl
def kvbench_methods():
    return [Tova]
