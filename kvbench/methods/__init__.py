"""Built-in methods: one small file each, registered through the same hook as third-party ones."""

from kvbench.methods.full import Full
from kvbench.methods.streamingllm import StreamingLLM
from kvbench.plugins import hookimpl


@hookimpl
def kvbench_methods():
    return [Full, StreamingLLM]
