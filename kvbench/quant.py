"""KV storage at 16 (the model's dtype), 8 or 4 bits: per-token group quantization in plain torch.

Each entry's head_dim channels are split into groups of `GROUP_SIZE`; a group stores its codes
(`bits` each, two 4-bit codes packed per byte) with an fp16 scale and minimum. Attention reads
dequantized tensors; the bytes held are the codes plus the scales, which is what the footprint
counts (relative to the model's dtype), so quantization and eviction sit on one axis.
"""

from __future__ import annotations

import torch

KV_BITS = (16, 8, 4)
GROUP_SIZE = 64


def bytes_per_entry(head_dim: int, dtype: torch.dtype, bits: int) -> int:
    """Bytes one KV entry (its key and its value, one head) takes when stored at `bits`."""
    if bits == 16:
        return 2 * head_dim * dtype.itemsize
    groups = -(-head_dim // min(GROUP_SIZE, head_dim))
    return 2 * (head_dim * bits // 8 + groups * 2 * torch.float16.itemsize)


class PlainStore:
    """Entries [1, h, n, d] in the model's dtype."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor.contiguous()

    def cat(self, new: torch.Tensor) -> None:
        self.tensor = torch.cat([self.tensor, new], dim=2)

    def gather(self, index: torch.Tensor) -> None:
        self.tensor = torch.gather(self.tensor, 2, index[None, :, :, None].expand(1, -1, -1, self.tensor.shape[-1]))

    def read(self) -> torch.Tensor:
        return self.tensor

    @property
    def nbytes(self) -> int:
        return self.tensor.untyped_storage().nbytes()


class QuantizedStore:
    """Entries [1, h, n, d] as per-token group codes: codes [1, h, n, d*bits/8] uint8, scale/low [1, h, n, groups]."""

    def __init__(self, tensor: torch.Tensor, bits: int):
        self.bits, self.dtype, self.head_dim = bits, tensor.dtype, tensor.shape[-1]
        self.group = min(GROUP_SIZE, self.head_dim)
        if self.head_dim % self.group or (bits == 4 and self.head_dim % 2):
            raise ValueError(
                f"kv_bits={bits} needs a head_dim divisible by {self.group} (and even); got {self.head_dim}"
            )
        self.codes, self.scale, self.low = self._quantize(tensor)

    def _quantize(self, x: torch.Tensor):
        grouped = x.float().unflatten(-1, (-1, self.group))  # [1, h, n, groups, group]
        low = grouped.amin(dim=-1)
        scale = (grouped.amax(dim=-1) - low).clamp_min(1e-8) / (2**self.bits - 1)
        codes = ((grouped - low[..., None]) / scale[..., None]).round().clamp(0, 2**self.bits - 1)
        codes = codes.to(torch.uint8).flatten(-2)
        if self.bits == 4:
            codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
        return codes, scale.to(torch.float16), low.to(torch.float16)

    def cat(self, new: torch.Tensor) -> None:
        codes, scale, low = self._quantize(new)
        self.codes = torch.cat([self.codes, codes], dim=2)
        self.scale = torch.cat([self.scale, scale], dim=2)
        self.low = torch.cat([self.low, low], dim=2)

    def gather(self, index: torch.Tensor) -> None:
        def pick(t):
            return torch.gather(t, 2, index[None, :, :, None].expand(1, -1, -1, t.shape[-1]))

        self.codes, self.scale, self.low = pick(self.codes), pick(self.scale), pick(self.low)

    def read(self) -> torch.Tensor:
        codes = self.codes
        if self.bits == 4:
            codes = torch.stack([codes & 0xF, codes >> 4], dim=-1).flatten(-2)
        grouped = codes.float().unflatten(-1, (-1, self.group))
        values = grouped * self.scale.float()[..., None] + self.low.float()[..., None]
        return values.flatten(-2).to(self.dtype)

    @property
    def nbytes(self) -> int:
        return sum(t.untyped_storage().nbytes() for t in (self.codes, self.scale, self.low))


def make_store(tensor: torch.Tensor, bits: int):
    return PlainStore(tensor) if bits == 16 else QuantizedStore(tensor, bits)
