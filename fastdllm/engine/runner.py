"""Model runner: packs the plans of several sequences into one forward pass.

All query tokens of a step go through the projections and MLPs as one [1, N] batch;
attention runs per sequence against its own span of the KV pool (see ``CachedAttention``), so
sequences of different lengths and phases (prefill chunks, decode steps) share a forward
without padding. Logits are computed only for the rows the plans read.
"""

from __future__ import annotations

import torch

from ..attention import CachedAttention, Segment, block_causal_mask, causal_mask
from ..kv_cache import KVCache
from ..model import Transformer
from .sequence import ForwardPlan


class ModelRunner:
    def __init__(self, model: Transformer):
        self.model = model
        self.cfg = model.cfg
        self.cache: KVCache | None = None

    def ensure_pool(self, positions: int) -> KVCache:
        """A cache of at least ``positions`` positions (one slot used as a pool; reused if big enough)."""
        dev, dt = self.model.device, self.model.dtype
        if self.cache is None or not self.cache.fits(1, positions, dt, dev):
            self.cache = None  # free the old one first
            self.cache = KVCache(self.cfg.num_hidden_layers, 1, self.cfg.num_key_value_heads, positions,
                                 self.cfg.head_dim, dt, dev)
        return self.cache

    def _mask(self, plan: ForwardPlan) -> torch.Tensor | None:
        if plan.mask == "full":
            return None
        dev = self.model.device
        q = torch.arange(plan.write_pos, plan.write_pos + len(plan.tokens), device=dev)
        k = torch.arange(plan.kv_end, device=dev)
        if plan.mask == "causal":
            return causal_mask(q, k)
        return block_causal_mask(q, k, plan.block_size)

    @torch.inference_mode()
    def run(self, work: list[tuple[int, ForwardPlan]]) -> list[torch.Tensor]:
        """work: (KV base, plan) pairs -> per plan, logits [len(plan.logit_rows), vocab]."""
        assert self.cache is not None
        dev = self.model.device
        tokens, positions, rows, segments = [], [], [], []
        offset = 0
        for base, plan in work:
            n = len(plan.tokens)
            tokens.extend(plan.tokens)
            positions.extend(range(plan.write_pos, plan.write_pos + n))
            rows.extend(offset + r for r in plan.logit_rows)
            segments.append(Segment(0, offset, n, plan.write_pos, plan.kv_end, self._mask(plan), base))
            offset += n
        ids = torch.tensor(tokens, dtype=torch.long, device=dev)[None]  # [1, N]
        pos = torch.tensor(positions, dtype=torch.long, device=dev)[None]  # [1, N]
        attend = CachedAttention(self.cache, segments, self.model.attn_scale)
        logits = self.model(ids, pos, attend, torch.tensor(rows, dtype=torch.long, device=dev))  # [R, V]
        return list(logits.split([len(p.logit_rows) for _, p in work]))
