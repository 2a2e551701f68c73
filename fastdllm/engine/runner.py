"""Model runner: packs the plans of several sequences into one forward pass.

All query tokens of a step go through the projections and MLPs as one [1, N] batch; attention
runs for all sequences at once, each against its own span of the KV pool (``PackedAttention``;
``packed=False`` runs it one sequence at a time, ``CachedAttention``), so sequences of
different lengths and phases (prefill chunks, decode steps) share a forward without padding the
matrix work. Logits are computed only for the rows the plans read. Everything the forward needs
from the host goes up before it starts; nothing is read back here. The forward itself runs on the
runner's backend (``backend.py``: eager or compiled PyTorch, or a native layer stack), chosen once. ``run_steps`` runs several AR
decode forwards back to back, each fed the tokens the last one picked, on the device.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..model.attention import block_causal_mask, causal_mask
from .backend import ForwardBackend, select_backend
from .cached_attention import CachedAttention, Segment
from .device import upload
from .kv_cache import KVCache
from ..model import Transformer
from .packed_attention import PackedAttention
from .sequence import ForwardPlan


class ModelRunner:
    def __init__(self, model: Transformer, packed: bool = True, backend: ForwardBackend | None = None):
        self.model = model
        self.backend = backend or select_backend(model)  # default runtime options when none is given
        self.cfg = model.cfg
        self.cache: KVCache | None = None
        self.packed = packed
        self.device = model.device  # refreshed by ensure_pool, once a step (the model may have moved)

    def ensure_pool(self, positions: int) -> KVCache:
        """A cache of at least ``positions`` positions (one slot used as a pool; reused if big enough)."""
        weight = self.model.embed_tokens.weight  # the model's device and dtype, read once
        dev, dt = weight.device, weight.dtype
        self.device = dev
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
    def run(self, work: list[tuple[int, ForwardPlan]]) -> torch.Tensor:
        """work: (KV base, plan) pairs -> logits [sum of len(plan.logit_rows), vocab], plan after plan."""
        assert self.cache is not None
        dev = self.device
        tokens, positions, rows, segments = [], [], [], []
        offset = 0
        for base, plan in work:
            n = len(plan.tokens)
            tokens.extend(plan.tokens)
            positions.extend(range(plan.write_pos, plan.write_pos + n))
            rows.extend(offset + r for r in plan.logit_rows)
            mask = None if self.packed else self._mask(plan)
            segments.append(Segment(0, offset, n, plan.write_pos, plan.kv_end, mask, base, plan.mask, plan.block_size))
            offset += n
        n = len(tokens)
        every = len(rows) == n and rows == list(range(n))  # every row read in order (AR steps): no selection
        meta = upload(tokens + positions + ([] if every else rows), torch.long, dev)  # one upload
        ids, pos = (meta if every else meta[:2 * n]).view(2, 1, n).unbind(0)  # [1, N] each
        read = None if every else meta[2 * n:]  # [R]
        return self.backend.forward(ids, pos, self._attention(segments), read)  # [R, V]

    def _attention(self, segments: list[Segment]):
        if self.packed:
            return PackedAttention(self.cache, segments, self.model.attn_scale)
        return CachedAttention(self.cache, segments, self.model.attn_scale)

    @torch.inference_mode()
    def run_steps(self, work: list[tuple[int, ForwardPlan]], steps: int, pick: Callable[[torch.Tensor], torch.Tensor],
                  greedy: bool = False, excluded: int | None = None) -> torch.Tensor:
        """AR decode plans (one token, one read row, no mask each) for ``steps`` forwards in a row:
        each forward feeds every sequence the token ``pick`` chose from the last one's logits
        ([N, V] -> [N]), on the device. -> [steps, N] the picked tokens, not read back.
        ``greedy``: ``pick`` is the argmax but column ``excluded``, which a backend may run with the
        forwards in one call (``NativeStackBackend.greedy_run``)."""
        assert self.cache is not None
        n = len(work)
        for _, plan in work:
            if len(plan.tokens) != 1 or plan.logit_rows != [0] or plan.mask != "full":
                raise ValueError("run_steps takes AR decode plans only")
        first = [plan.write_pos for _, plan in work]
        meta = upload([plan.tokens[0] for _, plan in work] + [w + j for j in range(steps) for w in first],
                      torch.long, self.device)  # one upload: the first ids, then every step's positions
        ids = meta[:n].view(1, n)  # [1, N]
        pos = meta[n:].view(steps, 1, n).unbind(0)  # steps x [1, N]
        scale = self.model.attn_scale

        def segments(j: int) -> list[Segment]:  # step j writes position write_pos + j and sees j more keys
            return [Segment(0, i, 1, plan.write_pos + j, plan.kv_end + j, None, base, "full", 0)
                    for i, (base, plan) in enumerate(work)]

        tables = None
        if self.packed:
            attend = PackedAttention(self.cache, segments(0), scale)
            if greedy:
                run = self.backend.greedy_run(ids, pos[0], attend, steps, excluded)
                if run is not None:
                    return run  # [steps, N]
            if self.backend.reads_row_tables:  # every step's row table at once, for a backend that reads them
                shift = torch.arange(steps)[:, None, None] * torch.tensor([1, 0, 1])  # [steps, 1, 3]
                tables = (attend.row_table() + shift).unbind(0)  # steps x [N, 3]
        picked = []
        for j in range(steps):
            attend = (PackedAttention(self.cache, segments(j), scale, tables and tables[j]) if self.packed
                      else CachedAttention(self.cache, segments(j), scale))
            logits = self.backend.forward(ids, pos[j], attend, None)  # [N, V]
            ids = pick(logits).view(1, n)  # [1, N]
            picked.append(ids)
        return torch.cat(picked)  # [steps, N]
