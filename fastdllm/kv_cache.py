"""Preallocated KV cache indexed by (slot, position), written in place.

Layout per layer: [slots, kv_heads, max_len, head_dim]. A sequence owns a span of positions
of a slot for its lifetime (the engine uses one slot as a pool and gives each sequence a span
starting at ``base``; see ``engine/kv_space.py``); keys and values are written at ``base`` plus
their absolute positions, and attention reads the view ``[base:base + kv_end]``, so nothing is
copied or concatenated (except when the engine compacts the pool, ``move``).
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

    def move(self, slot: int, src: int, dst: int, length: int) -> None:
        """Copy positions [src, src + length) of ``slot`` to [dst, dst + length) (spans may overlap)."""
        for t in (self.k, self.v):
            t[:, slot, :, dst:dst + length] = t[:, slot, :, src:src + length].clone()  # [layers, Hkv, length, D]
