"""Preallocated KV cache indexed by (slot, position), written in place.

Layout per layer: [slots, kv_heads, max_len, head_dim]. A sequence owns one slot for its
lifetime; keys and values are written at their absolute positions, and attention reads the
view ``[:kv_end]`` of its slot, so nothing is ever copied or concatenated.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, slots: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (num_layers, slots, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.slots = slots
        self.max_len = max_len

    def fits(self, slots: int, max_len: int, dtype: torch.dtype, device: torch.device) -> bool:
        return (self.slots >= slots and self.max_len >= max_len and self.k.dtype == dtype
                and self.k.device == torch.device(device))

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()
