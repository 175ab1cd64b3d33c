"""kvbench's one plugin hook and its markers: what a plugin implements to register methods.

Its own module, below both the plugin manager (kvbench/plugins.py) and the built-in methods (kvbench/methods/),
which are a plugin like any other: neither imports the other to find the markers.
"""

from __future__ import annotations

import pluggy

from kvbench.method import Method

PROJECT = "kvbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class MethodSpecs:
    @hookspec
    def kvbench_methods(self) -> list[type[Method]]:
        """Return the Method classes this plugin provides."""
