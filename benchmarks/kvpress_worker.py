"""The kvpress side of benchmarks/vs_kvpress.py. Runs inside benchmarks/.kvpress-venv (kvpress pins
its own transformers), never in kvbench's environment, and imports nothing from kvbench.

A line-oriented server, so that the parent can interleave kvpress and kvbench runs in one measurement:
each stdin line is a JSON request, each answer one JSON line on stdout.

  {"op": "load", "model": DIR, "threads": N}
  {"op": "run", "case": "full|snapkv|adakv|duo", "ids": FILE.pt, "new_tokens": 32, "memory": bool,
   "kept_out": FILE.pt|null, "compression_ratio": 0.75, "duo": {"gates": FILE, "share": 0.5, "sink": 64, "recent": 256}}

For benchmarks/kvpress_agreement.py, more cases, each press built with the request's "params" (its constructor's
keyword arguments, the defaults otherwise): "keydiff", "lagkv", "expected_attention", "simlayerkv", and the wrapped
"kvzip" (its tokenizer: the one saved beside the model), "think" (its key channels zeroed: read them from
"kept_out"), "adakv" / "chunkkv" (their scorer SnapKVPress, window "window", kernel "kernel"; "params" are the wrapper's, e.g.
alpha_safeguard, chunk_length). "masks_out": FILE.pt saves, per layer, the (head, position) pairs a per-head press
(AdaKVPress) masks after the prompt. A simlayerkv answer carries "layer_compression_ratios" (> 0: the layer was found
lazy) and "layer_shares" (the attention share its is_lazy compared with the threshold, per layer).

A run prefills the prompt under the press (as kvpress's pipeline does: the press is active for the
prefill only) and decodes greedily with the true position ids. With "memory", forward hooks measure
the physical cache bytes after every layer's append, before the press compresses it: the peak.
"""

from __future__ import annotations

import json
import sys
import time

import kvpress
import torch
from kvpress import (
    AdaKVPress,
    ChunkKVPress,
    DuoAttentionPress,
    ExpectedAttentionPress,
    KeyDiffPress,
    KVzipPress,
    LagKVPress,
    SimLayerKVPress,
    SnapKVPress,
    ThinKPress,
)
from kvpress.presses import duo_attention_press
from transformers import AutoModelForCausalLM, DynamicCache

MODEL = None


def cache_bytes(cache) -> int:
    """Physical bytes of every layer's K and V tensors (what the process really holds)."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.untyped_storage().nbytes()
    return total


class RecordingSimLayerKVPress(SimLayerKVPress):
    """SimLayerKVPress whose decisions are its own (is_lazy is the press's), recording for the report the share each
    layer's is_lazy compared with the threshold (its arithmetic restated: the mean attention of the last n_last
    queries over the first n_initial and the last n_recent of the keys before them)."""

    def __post_init__(self):
        super().__post_init__()
        self.shares = {}

    def is_lazy(self, module, hidden_states, keys, position_embeddings):
        weights = SnapKVPress.compute_window_attention(module, hidden_states, keys, self.n_last, position_embeddings)
        weights = weights.mean((0, 1, 2))
        self.shares[module.layer_idx] = float(weights[: self.n_initial].sum() + weights[-self.n_recent :].sum())
        return super().is_lazy(module, hidden_states, keys, position_embeddings)


def make_press(request):
    case = request["case"]
    ratio = request.get("compression_ratio", 0.75)
    params = request.get("params", {})
    if case == "full":
        return None

    def snapkv():
        return SnapKVPress(
            compression_ratio=ratio, window_size=request.get("window", 64), kernel_size=request.get("kernel", 5)
        )

    if case == "snapkv":
        return snapkv()
    if case == "adakv":
        return AdaKVPress(snapkv(), **params)
    if case == "chunkkv":
        return ChunkKVPress(snapkv(), **params)
    if case == "keydiff":
        return KeyDiffPress(compression_ratio=ratio, **params)
    if case == "lagkv":
        return LagKVPress(compression_ratio=ratio, **params)
    if case == "kvzip":  # its tokenizer is the one saved beside the model (AutoTokenizer on name_or_path)
        return KVzipPress(compression_ratio=ratio, **params)
    if case == "think":  # prunes key channels (zeroes them): "params" has key_channel_compression_ratio
        return ThinKPress(**params)
    if case == "expected_attention":
        return ExpectedAttentionPress(compression_ratio=ratio, **params)
    if case == "simlayerkv":
        return RecordingSimLayerKVPress(**params)
    if case == "duo":
        duo = request["duo"]
        # DuoAttentionPress downloads the released pattern for known checkpoints; offline, we seed its pattern
        # cache (keyed by the model's name_or_path) with our gates, so its own head selection still runs.
        gates = torch.tensor([[float(x) for x in line.split()] for line in open(duo["gates"]) if line.strip()])
        duo_attention_press.cache[MODEL.config.name_or_path] = (duo["sink"], duo["recent"], gates.numpy())
        return DuoAttentionPress(head_compression_ratio=duo["share"])
    raise ValueError(f"unknown case {case!r}")


def run(request) -> dict:
    model = MODEL
    ids = torch.load(request["ids"])[None]
    new_tokens = request.get("new_tokens", 32)
    press = make_press(request)
    cache = DynamicCache()
    peak = [0]
    hooks = []
    if request.get("memory"):
        # Registered before the press's hooks, so these run first: the cache after this layer's append,
        # before its compression. Summed over all layers as they stand: the physical bytes at that moment.
        def measure(module, args, kwargs, output):
            peak[0] = max(peak[0], cache_bytes(cache))

        hooks = [layer.self_attn.register_forward_hook(measure, with_kwargs=True) for layer in model.model.layers]
    try:
        with torch.inference_mode():
            start = time.perf_counter()
            with press(model) if press is not None else _nothing():
                logits = model(input_ids=ids, past_key_values=cache, logits_to_keep=1).logits[0, -1]
            prefilled = time.perf_counter()
            after_prompt = cache_bytes(cache)
            held_entries = sum(layer.keys.shape[2] * layer.keys.shape[1] for layer in cache.layers)
            masked = sum(_masked(layer.self_attn) for layer in model.model.layers)
            tokens = [int(logits.argmax())]
            for step in range(new_tokens - 1):
                position = torch.tensor([[ids.shape[1] + step]])
                out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache, position_ids=position)
                tokens.append(int(out.logits[0, -1].argmax()))
            done = time.perf_counter()
        if request.get("masks_out"):  # before the masks are cleared below
            torch.save([_mask_pairs(layer.self_attn) for layer in model.model.layers], request["masks_out"])
    finally:
        for hook in hooks:
            hook.remove()
        for layer in model.model.layers:  # the masks of per-head presses must not leak into the next run
            layer.self_attn.masked_key_indices = None
    if request.get("kept_out"):
        torch.save([(layer.keys[0].clone()) for layer in cache.layers], request["kept_out"])
    extra = {}
    if isinstance(press, RecordingSimLayerKVPress):
        extra = {"layer_compression_ratios": list(press.compression_ratios), "layer_shares": press.shares}
    return {
        **extra,
        "case": request["case"],
        "prefill_s": prefilled - start,
        "total_s": done - start,
        "kv_bytes_after_prompt": after_prompt,
        "kv_peak_bytes": max(peak[0], cache_bytes(cache)) if request.get("memory") else None,
        "held_entries": held_entries,
        "masked_entries": masked,
        "tokens": tokens,
    }


def _masked(attention) -> int:
    """Entries a per-head press masks (kept in memory, hidden from attention by a fake key)."""
    indices = getattr(attention, "masked_key_indices", None)
    return 0 if indices is None else int(indices[0].numel())


def _mask_pairs(attention) -> torch.Tensor:
    """[m, 2]: the (KV head, position) pairs a per-head press masks in this layer (batch 0); empty if none."""
    indices = getattr(attention, "masked_key_indices", None)
    if indices is None:
        return torch.zeros(0, 2, dtype=torch.long)
    batch, head, position = indices
    keep = batch == 0
    return torch.stack([head[keep], position[keep]], dim=1).cpu()


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def main() -> None:
    global MODEL
    import transformers

    transformers.utils.logging.disable_progress_bar()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "load":
                torch.set_num_threads(request.get("threads", 1))
                MODEL = AutoModelForCausalLM.from_pretrained(request["model"], dtype=torch.float32).eval()
                answer = {
                    "ok": True,
                    "kvpress": kvpress.__version__ if hasattr(kvpress, "__version__") else _version("kvpress"),
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                    "attn": MODEL.config._attn_implementation,
                }
            elif request["op"] == "run":
                answer = {"ok": True, **run(request)}
            else:
                answer = {"ok": False, "error": f"unknown op {request['op']!r}"}
        except Exception as error:  # report to the parent, which stops with the message
            import traceback

            answer = {"ok": False, "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-3000:]}
        print(json.dumps(answer), flush=True)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
