"""Attention over the engine's KV pool, one sequence at a time; the packed step's segments.

The engine packs its batch into one row of tokens, made of segments (one per sequence), each
written into its span of the KV cache and attending to that span only. ``PackedAttention``
(``packed_attention.py``) serves the engine: one attention call per layer for all segments.
``CachedAttention`` does the same one segment at a time (the reference it is tested against,
and the engine's fallback).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kv_cache import KVCache


@dataclass
class Segment:
    """One sequence's share of a packed forward."""

    slot: int          # KV-cache slot of the sequence
    start: int         # offset of its tokens in the packed batch
    length: int        # number of query tokens
    write_pos: int     # absolute position of its first token (where its KV are written)
    kv_end: int        # attend to cached positions [0, kv_end)
    mask: torch.Tensor | None = None  # [length, kv_end] bool, True = may attend; None = all (CachedAttention)
    base: int = 0      # where the sequence's position 0 lives in the slot (its span of the pool)
    kind: str = "full"  # the mask as a rule, for PackedAttention: "full", "causal" or "block_causal"
    block_size: int = 0  # for "block_causal"


class CachedAttention:
    def __init__(self, cache: KVCache, segments: list[Segment], scale: float):
        self.cache = cache
        self.segments = segments
        self.scale = scale

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: [1, N, Hq, D]; k, v: [1, N, Hkv, D]
        ck, cv = self.cache.k[layer], self.cache.v[layer]  # [slots, Hkv, S, D]
        out = torch.empty(q.shape[1], q.shape[2] * q.shape[3], dtype=q.dtype, device=q.device)  # [N, Hq*D]
        for s in self.segments:
            a, b = s.start, s.start + s.length
            w, e = s.base + s.write_pos, s.base + s.kv_end
            ck[s.slot, :, w:w + s.length] = k[0, a:b].transpose(0, 1)
            cv[s.slot, :, w:w + s.length] = v[0, a:b].transpose(0, 1)
            qs = q[0, a:b].transpose(0, 1).unsqueeze(0)  # [1, Hq, T, D]
            o = F.scaled_dot_product_attention(
                qs, ck[s.slot, :, s.base:e].unsqueeze(0), cv[s.slot, :, s.base:e].unsqueeze(0),
                attn_mask=s.mask, scale=self.scale, enable_gqa=True,
            )  # [1, Hq, T, D]
            out[a:b] = o[0].transpose(0, 1).reshape(s.length, -1)
        return out.unsqueeze(0)


