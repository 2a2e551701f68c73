"""Attention for all the sequences of a packed forward in one call per layer.

The engine's forward packs every sequence's query tokens into one row (``Segment``: its tokens,
its span of the KV pool, its mask rule). ``PackedAttention`` writes all their new keys and
values into the pool with one ``index_copy_`` per layer, then runs one
``scaled_dot_product_attention`` per group of segments with the same number of query tokens
(in a decode step, usually one group: every sequence feeds a block, a sub-block or one token):
the group's key spans are gathered from the pool into a [segments, Hkv, Kmax, D] batch (one
``index_select``) and a boolean mask cuts each segment to its own keys and rule (full, causal,
block-causal). A group of one segment reads its span as a view, as ``CachedAttention`` does.
Everything that depends only on the step (write rows, key rows, masks) is built once, by the
first layer's call, not per layer.

Padding keys to the group's longest span changes the summation order inside the kernel, so
results equal the per-segment path's up to rounding, not bit for bit. (FlexAttention was
measured as the alternative: on the CPU it needs ``torch.compile`` and was still slower than
this at the engine's sizes, and building its block mask costs more than the step.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cached_attention import Segment
from .device import upload
from .kv_cache import KVCache

_FULL = 1 << 40  # block size that puts every key and query in one block: the full mask


@dataclass
class _Group:
    count: int                       # segments
    length: int                      # query tokens of each
    start: int | None                # packed row of its first query when its queries are contiguous
    q_rows: torch.Tensor | None      # [count * length] packed rows of its queries otherwise
    span: tuple[int, int]            # pool rows of a lone segment's keys (a view)
    key_rows: torch.Tensor | None    # [count * kmax] pool rows to gather (None: the ``span`` view)
    kmax: int
    mask: torch.Tensor | None        # [count, 1, length or 1, kmax] bool, True = may attend; None = all


class PackedAttention:
    def __init__(self, cache: KVCache, segments: list[Segment], scale: float,
                 row_table: torch.Tensor | None = None):
        self.cache = cache
        self.scale = scale
        self.segments = segments
        self._row_table = row_table  # ``row_table()``'s answer when the caller has it already
        self._groups: list[_Group] | None = None  # built when first needed: a forward through the
        # quantised C++ stack reads ``row_table`` instead and never calls this back end
        self._whole = False

    @property
    def groups(self) -> list[_Group]:
        if self._groups is None:
            self._prepare()
        return self._groups

    @property
    def whole(self) -> bool:
        """One group whose queries are the whole packed batch, in order."""
        return bool(self.groups) and self._whole

    def _prepare(self) -> None:
        segments, cache = self.segments, self.cache
        dev = cache.data.device
        S = cache.max_len
        by_length: dict[int, list[int]] = {}  # query length -> segment indices, in packed order
        for i, s in enumerate(segments):
            by_length.setdefault(s.length, []).append(i)
        self.write_span = None  # a lone segment writes a contiguous run of rows: no index needed
        if len(segments) == 1:
            s = segments[0]
            self.write_span = (s.slot * S + s.base + s.write_pos, s.slot * S + s.base + s.write_pos + s.length)
            if s.kind == "full":
                self._groups = [self._group([s], None, None, S, dev)]
                self._whole = True
                return
        # one upload: write rows [N], then per segment (first pool row, kv_end, write_pos, block), then query rows
        flat: list[int] = []
        if self.write_span is None:
            for s in segments:
                first = s.slot * S + s.base + s.write_pos
                flat.extend(range(first, first + s.length))
        n = len(flat)
        order = [i for members in by_length.values() for i in members]
        for i in order:
            s = segments[i]
            block = {"full": _FULL, "causal": 1}.get(s.kind, s.block_size)
            flat += [s.slot * S + s.base, s.kv_end, s.write_pos, block]
        gathered = []  # (members, offset of their query rows in ``flat`` or None)
        for members in by_length.values():
            first, last = segments[members[0]], segments[members[-1]]
            contiguous = last.start + last.length - first.start == len(members) * first.length
            if contiguous:
                gathered.append((members, None))
            else:
                gathered.append((members, len(flat)))
                for i in members:
                    flat.extend(range(segments[i].start, segments[i].start + segments[i].length))
        meta = upload(flat, torch.long, dev)
        self.write_rows = meta[:n]  # [N]
        table = meta[n:n + 4 * len(order)].view(-1, 4)  # [segments, 4], in group order
        groups_out = []
        at = 0
        for members, q_at in gathered:
            segs = [segments[i] for i in members]
            B, T = len(segs), segs[0].length
            q_rows = None if q_at is None else meta[q_at:q_at + B * T]
            groups_out.append(self._group(segs, table[at:at + B], q_rows, S, dev))
            at += B
        self._groups = groups_out
        self._whole = len(groups_out) == 1 and groups_out[0].start == 0

    @staticmethod
    def _group(segs: list[Segment], tab: torch.Tensor, q_rows, S: int, dev) -> _Group:
        B, T = len(segs), segs[0].length
        kmax = max(s.kv_end for s in segs)
        first = segs[0].slot * S + segs[0].base
        span = (first, first + segs[0].kv_end)
        start = None if q_rows is not None else segs[0].start
        ragged = any(s.kv_end != kmax for s in segs)
        if B == 1 and all(s.kind == "full" for s in segs):
            return _Group(B, T, start, q_rows, span, None, kmax, None)
        row0, kv_end, write_pos, block = tab.unbind(1)  # [B] each
        j = torch.arange(kmax, device=dev)  # [kmax]
        inside = j < kv_end[:, None]  # [B, kmax]
        key_rows = None if B == 1 else torch.where(inside, row0[:, None] + j, row0[:, None]).flatten()  # pads read a real key
        if all(s.kind == "full" for s in segs):
            mask = inside[:, None, None, :] if ragged else None  # [B, 1, 1, kmax]
        else:
            q_pos = write_pos[:, None] + torch.arange(T, device=dev)  # [B, T]
            seen = (j // block[:, None])[:, None, :] <= (q_pos // block[:, None])[:, :, None]  # [B, T, kmax]
            mask = (seen & inside[:, None, :])[:, None]  # [B, 1, T, kmax]
        return _Group(B, T, start, q_rows, span, key_rows, kmax, mask)

    def row_table(self) -> torch.Tensor:
        """The step's attention as rows, for kernels that take it whole (``kernels/stack.py``).

        Per packed query row: the cache row its keys and values go to, the cache row of its
        sequence's position 0, and how many positions from there it attends to (each mask rule
        is a prefix of the sequence's span). int64 [N, 3] on the CPU.
        """
        if self._row_table is not None:
            return self._row_table
        S = self.cache.max_len
        table = [0] * (3 * sum(s.length for s in self.segments))
        for s in self.segments:
            first = s.slot * S + s.base
            for i in range(s.length):
                p = s.write_pos + i
                if s.kind == "full":
                    n = s.kv_end
                elif s.kind == "causal":
                    n = min(s.kv_end, p + 1)
                elif s.kind == "block_causal":  # every key of its own block and the blocks before
                    n = min(s.kv_end, (p // s.block_size + 1) * s.block_size)
                else:
                    raise ValueError(f"unknown mask rule {s.kind!r}")
                table[3 * (s.start + i):3 * (s.start + i + 1)] = (first + p, first, n)
        return torch.tensor(table, dtype=torch.long).view(-1, 3)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: [1, N, Hq, D]; k, v: [1, N, Hkv, D]
        groups = self.groups
        rows = self.cache.rows(layer)  # [slots * S, 2, Hkv, D]
        new = torch.stack((k[0], v[0]), dim=1)  # [N, 2, Hkv, D]
        if self.write_span is None:
            rows.index_copy_(0, self.write_rows, new)
        else:
            rows[self.write_span[0]:self.write_span[1]] = new
        if self._whole:
            return self._attend(groups[0], rows, q[0]).unsqueeze(0)
        out = q.new_empty(q.shape[1], q.shape[2] * q.shape[3])  # [N, Hq*D]
        for g in groups:
            o = self._attend(g, rows, q[0])  # [count * length, Hq*D]
            if g.q_rows is None:
                out[g.start:g.start + o.shape[0]] = o
            else:
                out.index_copy_(0, g.q_rows, o)
        return out.unsqueeze(0)

    def _attend(self, g: _Group, rows: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        B, T = g.count, g.length
        Hq, D = q.shape[1], q.shape[2]
        qg = q[g.start:g.start + B * T] if g.q_rows is None else q.index_select(0, g.q_rows)  # [B*T, Hq, D]
        qg = qg.reshape(B, T, Hq, D).transpose(1, 2)  # [B, Hq, T, D]
        if g.key_rows is None:
            kv = rows[g.span[0]:g.span[1]][None]  # [1, K, 2, Hkv, D], a view of the pool
        else:
            kv = rows.index_select(0, g.key_rows).view(B, g.kmax, *rows.shape[1:])  # [B, kmax, 2, Hkv, D]
        keys, values = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # [B, Hkv, K, D]
        o = F.scaled_dot_product_attention(qg, keys, values, attn_mask=g.mask, scale=self.scale,
                                           enable_gqa=True)  # [B, Hq, T, D]
        return o.transpose(1, 2).reshape(B * T, Hq * D)
