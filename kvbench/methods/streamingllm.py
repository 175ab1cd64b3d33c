"""StreamingLLM (Xiao et al., 2023): keep the first `sink` entries and the last `window` ones."""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.method import KeepView, Method, require
from kvbench.settings import DEFAULT_SINK, DEFAULT_WINDOW


def sinks_and_window(view: KeepView, sink: int, window: int):
    """Held indices of the first `sink` and last `window` entries, or None when that is all of them."""
    held = view.num_held - view.num_scoring
    if held <= sink + window:
        return None
    return view.keep_ranges(range(sink), range(held - window, view.num_held))


def check_sink_and_window(sink, window) -> None:
    require(isinstance(sink, int) and sink >= 0, f"sink must be an integer >= 0; got {sink!r}")
    require(isinstance(window, int) and window >= 1, f"window must be an integer >= 1; got {window!r}")


@dataclass
class StreamingLLM(Method):
    sink: int = DEFAULT_SINK
    window: int = DEFAULT_WINDOW

    name = "streamingllm"
    category = "recency"
    description = "Attention sinks plus a local window of the most recent entries."
    knob = "window"
    knob_values = (128, 256, 512, 1024, 2048, 4096)
    keeps_everything = {"window": 10**9}

    def validate(self) -> None:
        check_sink_and_window(self.sink, self.window)

    def select(self, view: KeepView):
        return sinks_and_window(view, self.sink, self.window)
