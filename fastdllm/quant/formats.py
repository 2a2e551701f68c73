"""Weight-only quantisation formats: what is stored, and the real weight it stands for.

- ``Int8Weight``: one scale per output channel, symmetric:
  ``w[n, k] = q[n, k] * scale[n]``, ``q`` in [-127, 127], ``scale = max_k |w[n, k]| / 127``.
- ``Int4Weight``: one scale and zero point per group of ``group_size`` inputs, asymmetric, in the
  convention of torch's int4pack kernels: ``w[n, k] = (q[n, k] - 8) * scale[n, g] + zero[n, g]``
  with ``q`` in [0, 15] and ``g = k // group_size``. Quantising from floats is min-max:
  ``scale = (max - min) / 15``, ``zero = min + 8 * scale``.

GGUF's 4-bit blocks of 32 are this int4 format: Q4_0 (``w = d * (q - 8)``) has ``scale = d``,
``zero = 0``; Q4_1 (``w = d * q + m``) has ``scale = d``, ``zero = m + 8 * d``. Both formats
support concatenating along the output rows (fused projections) and row permutations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

INT4_GROUP_SIZES = (32, 64, 128, 256)  # what torch's int4 kernels accept


@dataclass
class Int8Weight:
    q: torch.Tensor      # [N, K] int8
    scale: torch.Tensor  # [N] float32

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    @classmethod
    def from_float(cls, w: torch.Tensor) -> "Int8Weight":
        w = w.float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # [N]
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # [N, K]
        return cls(q, scale)

    def dequantize(self) -> torch.Tensor:
        return self.q.float() * self.scale[:, None]  # [N, K]

    def map_rows(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Int8Weight":
        return Int8Weight(fn(self.q), fn(self.scale[:, None])[:, 0])

    @staticmethod
    def cat(parts: list["Int8Weight"]) -> "Int8Weight":
        return Int8Weight(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]))


@dataclass
class Int4Weight:
    q: torch.Tensor      # [N, K] uint8, values 0..15 (one code per byte until packed for a kernel)
    scale: torch.Tensor  # [N, K / group_size] float32
    zero: torch.Tensor   # [N, K / group_size] float32

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    @property
    def group_size(self) -> int:
        return self.q.shape[1] // self.scale.shape[1]

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int = 32) -> "Int4Weight":
        N, K = w.shape
        if K % group_size:
            raise ValueError(f"int4: input size {K} is not a multiple of the group size {group_size}")
        g = w.float().reshape(N, K // group_size, group_size)  # [N, G, group]
        lo, hi = g.amin(-1), g.amax(-1)  # [N, G]
        scale = ((hi - lo) / 15).clamp(min=1e-12)
        q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
        return cls(q.reshape(N, K), scale, lo + 8 * scale)

    def dequantize(self) -> torch.Tensor:
        N, K = self.q.shape
        g = self.q.reshape(N, -1, self.group_size).float() - 8  # [N, G, group]
        return (g * self.scale[..., None] + self.zero[..., None]).reshape(N, K)

    def map_rows(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Int4Weight":
        return Int4Weight(fn(self.q), fn(self.scale), fn(self.zero))

    @staticmethod
    def cat(parts: list["Int4Weight"]) -> "Int4Weight":
        if len({p.group_size for p in parts}) != 1:
            raise ValueError("int4: cannot fuse weights with different group sizes")
        return Int4Weight(*(torch.cat([getattr(p, f) for p in parts]) for f in ("q", "scale", "zero")))


QuantizedWeight = Int8Weight | Int4Weight


def as_float(w: torch.Tensor | QuantizedWeight) -> torch.Tensor:
    """A plain tensor for ``w`` (quantised weights dequantised to float32)."""
    return w if isinstance(w, torch.Tensor) else w.dequantize()


def cat_rows(parts: list) -> torch.Tensor | QuantizedWeight:
    """Concatenate weights along the output rows, keeping a shared quantised format."""
    kinds = {type(p) for p in parts}
    if len(kinds) == 1 and kinds <= {Int8Weight, Int4Weight}:
        return kinds.pop().cat(parts)
    if kinds & {Int8Weight, Int4Weight}:  # mixed formats (rare in a file): fall back to floats
        return torch.cat([as_float(p) for p in parts])
    return torch.cat(parts)
