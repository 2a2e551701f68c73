"""Attention as the transformer sees it: a callable per layer, and the dense one.

The model calls ``attend(layer, q, k, v)`` at every layer and does not know where keys and
values come from or go to: that is the caller's business (``AttentionFn``). The engine passes
attention over its KV pool (``fastdllm.engine.packed_attention``); ``DenseAttention`` serves the
naive oracle, the training forward and the numerical tests: plain attention over the given keys
with an explicit boolean mask. The masks here are the rules both sides share.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


AttentionFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(layer, q [B, T, Hq, D], k, v [B, T, Hkv, D]) -> attention output [B, T, Hq * D]."""


class DenseAttention:
    """Attention over the current tokens only (plus an optional per-layer prefix of K/V).

    ``mask``: bool [B or 1, 1, T, S] with S = prefix length + T; None means full attention.
    ``record``: keep every layer's (k, v) of the current tokens in ``self.kv``.
    """

    def __init__(self, mask: torch.Tensor | None, scale: float,
                 prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None, record: bool = False):
        self.mask = mask
        self.scale = scale
        self.prefix = prefix
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if record else None

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        if self.kv is not None:
            self.kv.append((k, v))
        if self.prefix is not None:
            pk, pv = self.prefix[layer]
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, scale=self.scale, enable_gqa=True)
        return o.transpose(1, 2).flatten(2)  # [B, T, Hq*D]


def block_causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, block_size: int) -> torch.Tensor:
    """Query at position i may attend key at j iff block(j) <= block(i). Returns [Tq, Tk] bool."""
    return (k_pos[None, :] // block_size) <= (q_pos[:, None] // block_size)


def causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    return k_pos[None, :] <= q_pos[:, None]
