"""StreamingLLM (Xiao et al., 2023): keep the first `sink` entries and the last `window` ones."""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.method import KeepView, Method, require


@dataclass
class StreamingLLM(Method):
    sink: int = 128
    window: int = 1024

    name = "streamingllm"
    category = "recency"
    description = "Attention sinks plus a local window of the most recent entries."
    knob = "window"
    knob_values = (128, 256, 512, 1024, 2048, 4096)
    keeps_everything = {"window": 10**9}

    def validate(self) -> None:
        require(isinstance(self.sink, int) and self.sink >= 0, f"sink must be an integer >= 0; got {self.sink!r}")
        require(
            isinstance(self.window, int) and self.window >= 1, f"window must be an integer >= 1; got {self.window!r}"
        )

    def select(self, view: KeepView):
        held = view.num_held
        if held <= self.sink + self.window:
            return None
        return view.keep_ranges(range(self.sink), range(held - self.window, held))
