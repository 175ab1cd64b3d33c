"""Full attention vs StreamingLLM on a random-weight Llama: the measured footprint, next to the formula.

Runs offline in seconds: `bash scripts/dev.sh example`.
"""

import torch
from rich.console import Console
from rich.table import Table
from transformers import LlamaConfig, LlamaForCausalLM

from kvbench import generate
from kvbench.ledger import analytic_footprint
from kvbench.methods.full import Full
from kvbench.methods.streamingllm import StreamingLLM

torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=8192,
)
model = LlamaForCausalLM(config).eval()
prompt = torch.randint(0, 512, (4000,))
chunk_size, new_tokens = 1024, 17

table = Table(title=f"{len(prompt)}-token prompt, chunk {chunk_size}, {new_tokens} new tokens")
for column in ("method", "kv_footprint", "formula", "kv_peak", "kv_peak_bytes"):
    table.add_column(column)
for method in (Full(), StreamingLLM(sink=64, window=512), StreamingLLM(sink=16, window=128)):
    result = generate(model, prompt, method, chunk_size=chunk_size, max_new_tokens=new_tokens, eos_token_id=[])
    kind = "full" if method.name == "full" else "streaming"
    formula, _ = analytic_footprint(
        len(prompt),
        result.decode_steps,
        chunk_size,
        kind,
        sink=getattr(method, "sink", 0),
        window=getattr(method, "window", 0),
    )
    stats = result.stats
    table.add_row(
        f"{method.name} {method.params()}",
        f"{stats.kv_footprint:.4f}",
        f"{formula:.4f}",
        f"{stats.kv_peak:.4f}",
        f"{stats.kv_peak_bytes / 2**20:.2f} MiB",
    )
Console().print(table)
