"""Preallocated KV cache indexed by (slot, position), written in place.

``k`` and ``v`` are [layers, slots, kv_heads, max_len, head_dim] views of one position-major
buffer [layers, slots, max_len, 2, kv_heads, head_dim]: a position's keys and values of one
layer are one contiguous row, so a packed forward writes all its new keys and values with one
``index_copy_`` per layer and gathers several sequences' spans with one ``index_select``
(``rows``). A sequence owns a span of positions of a slot for its lifetime (the engine uses one
slot as a pool and gives each sequence a span starting at ``base``; see
``engine/kv_space.py``); keys and values are written at ``base`` plus their absolute
positions, and attention reads the view ``[base:base + kv_end]``, so nothing is copied or
concatenated (except when the engine compacts the pool, ``move``).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, slots: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        self.data = torch.zeros((num_layers, slots, max_len, 2, kv_heads, head_dim), dtype=dtype, device=device)
        self.k = self.data[:, :, :, 0].permute(0, 1, 3, 2, 4)  # [layers, slots, Hkv, max_len, D]
        self.v = self.data[:, :, :, 1].permute(0, 1, 3, 2, 4)
        self.slots = slots
        self.max_len = max_len

    def fits(self, slots: int, max_len: int, dtype: torch.dtype, device: torch.device) -> bool:
        return (self.slots >= slots and self.max_len >= max_len and self.data.dtype == dtype
                and self.data.device == torch.device(device))

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def rows(self, layer: int) -> torch.Tensor:
        """Layer ``layer`` as one row per (slot, position): [slots * max_len, 2, Hkv, D] (a view)."""
        return self.data[layer].flatten(0, 1)

    def move(self, slot: int, src: int, dst: int, length: int) -> None:
        """Copy positions [src, src + length) of ``slot`` to [dst, dst + length) (spans may overlap)."""
        self.data[:, slot, dst:dst + length] = self.data[:, slot, src:src + length].clone()  # [layers, length, 2, Hkv, D]
