"""Packed attention (one call per layer for all segments) against the per-segment path."""

from __future__ import annotations

import pytest
import torch

from fastdllm.engine.cached_attention import CachedAttention, Segment
from fastdllm.model.attention import block_causal_mask, causal_mask
from fastdllm.engine.kv_cache import KVCache
from fastdllm.engine.packed_attention import PackedAttention

HQ, HKV, D, LAYERS, SLOTS, LEN = 4, 2, 8, 2, 2, 200

# (slot, base, write_pos, length, kv_end, kind, block_size): full blocks, sub-blocks and AR steps
# of several lengths, non-contiguous groups, causal and block-causal prefill chunks, two slots
PARTS = [
    (0, 0, 40, 8, 48, "full", 0),
    (0, 60, 0, 5, 5, "causal", 0),
    (1, 10, 16, 16, 32, "block_causal", 8),
    (0, 100, 24, 8, 32, "full", 0),
    (0, 140, 30, 1, 31, "causal", 0),
    (1, 50, 64, 8, 96, "full", 0),
    (0, 175, 12, 1, 13, "full", 0),
    (1, 150, 3, 9, 12, "block_causal", 4),
]


def segments(parts) -> list[Segment]:
    segs, start = [], 0
    for slot, base, wp, n, kv_end, kind, bs in parts:
        q, k = torch.arange(wp, wp + n), torch.arange(kv_end)
        mask = None if kind == "full" else causal_mask(q, k) if kind == "causal" else block_causal_mask(q, k, bs)
        segs.append(Segment(slot, start, n, wp, kv_end, mask, base, kind, bs))
        start += n
    return segs


def poisoned_cache(parts, dtype) -> KVCache:
    """Keys and values of each segment's span (cached, or about to be overwritten) are random; every
    other position is NaN, so reading outside a span poisons the output."""
    cache = KVCache(LAYERS, SLOTS, HKV, LEN, D, dtype, "cpu")
    cache.data.fill_(float("nan"))
    g = torch.Generator().manual_seed(1)
    for slot, base, _, _, kv_end, *_ in parts:
        span = cache.data[:, slot, base:base + kv_end]
        span.copy_(torch.randn(span.shape, generator=g, dtype=dtype))
    return cache


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("parts", [PARTS, PARTS[:1], PARTS[3:4] + PARTS[:1], [PARTS[4]], PARTS[::-1]],
                         ids=["mixed", "one", "two-full-ragged", "one-causal", "mixed-reversed"])
def test_packed_matches_per_segment(parts, dtype, tol):
    segs = segments(parts)
    n = sum(p[3] for p in parts)
    g = torch.Generator().manual_seed(2)
    qkv = [torch.randn(1, n, h, D, generator=g, dtype=dtype) for h in (HQ, HKV, HKV)]
    ref_cache, packed_cache = poisoned_cache(parts, dtype), poisoned_cache(parts, dtype)
    ref = CachedAttention(ref_cache, segs, D ** -0.5)
    packed = PackedAttention(packed_cache, segs, D ** -0.5)
    for layer in range(LAYERS):
        expected = ref(layer, *qkv)
        out = packed(layer, *qkv)
        assert out.shape == expected.shape == (1, n, HQ * D)
        assert not out.isnan().any()
        torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
        if len(parts) == 1:  # a lone segment reads its span as a view: the very same call
            assert torch.equal(out, expected)
    # the same keys and values were written, at the same places, and nothing else
    assert torch.equal(packed_cache.data.isnan(), ref_cache.data.isnan())
    assert torch.equal(packed_cache.data.nan_to_num(), ref_cache.data.nan_to_num())
    assert torch.equal(packed_cache.k.nan_to_num(), ref_cache.k.nan_to_num())


def test_groups_by_query_length():
    segs = segments(PARTS)
    packed = PackedAttention(poisoned_cache(PARTS, torch.float32), segs, 1.0)
    assert sorted((g.length, g.count) for g in packed.groups) == [(1, 2), (5, 1), (8, 3), (9, 1), (16, 1)]
    one = PackedAttention(poisoned_cache(PARTS, torch.float32), segments(PARTS[:1]), 1.0)
    assert one.whole and one.groups[0].key_rows is None and one.groups[0].mask is None  # a view, no mask


@pytest.mark.parametrize("parts", [PARTS, PARTS[::-1]], ids=["mixed", "mixed-reversed"])
def test_row_table_is_the_masks(parts):
    """Each packed query row's write row, span start and key count describe its segment's mask."""
    segs = segments(parts)
    table = PackedAttention(poisoned_cache(parts, torch.float32), segs, 1.0).row_table()
    assert table.shape == (sum(s.length for s in segs), 3)
    for s in segs:
        mask = torch.ones(s.length, s.kv_end, dtype=torch.bool) if s.mask is None else s.mask
        for i in range(s.length):
            write, first, count = table[s.start + i].tolist()
            assert write == s.slot * LEN + s.base + s.write_pos + i and first == s.slot * LEN + s.base
            assert torch.equal(mask[i], torch.arange(s.kv_end) < count)  # the mask is a prefix of the span
