"""Numerics of fastdllm's transformer against transformers, and of its attention back ends
against each other (full vs chunked/cached vs packed vs block-causal)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from fastdllm.engine.cached_attention import CachedAttention, Segment
from fastdllm.model.attention import DenseAttention, block_causal_mask, causal_mask
from fastdllm.engine.kv_cache import KVCache
from fastdllm.loading import load_checkpoint
from tests.helpers import hf_logits, hf_reference_model, make_tiny_checkpoint, random_ids

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}

#: name -> (family, make_tiny_checkpoint options)
VARIANTS = {
    "qwen2": ("qwen2", dict(rope_theta=1e6)),
    "qwen2-tied": ("qwen2", dict(tie=True)),
    "llama": ("llama", dict()),
    "llama-tied": ("llama", dict(tie=True)),
    # q/k/v/o and MLP biases, and head_dim != hidden / heads
    "llama-bias-headdim": ("llama", dict(attention_bias=True, mlp_bias=True, head_dim=32)),
    # llama3 RoPE scaling as transformers 4.x wrote it (top-level rope_theta + rope_scaling)
    "llama-rope3-legacy": ("llama", dict(rope_scaling=LLAMA3, rope_theta=5e5, legacy_rope=True)),
    # llama3 RoPE scaling as transformers 5 writes it (only a rope_parameters dict)
    "llama-rope3-v5": ("llama", dict(rope_scaling=LLAMA3, rope_theta=5e5)),
    "fast_dllm": ("fast_dllm", dict(rope_theta=1e6, confident=True)),
}
ORACLE_VARIANTS = list(VARIANTS)
T = 48


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            family, opts = VARIANTS[name]
            cache[name] = make_tiny_checkpoint(tmp_path_factory.mktemp(name), family, **opts)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def fast_model(ckpt_dir):
    cache: dict[tuple[str, str], object] = {}

    def get(name: str, dtype: str = "float64"):
        if (name, dtype) not in cache:
            cache[name, dtype] = load_checkpoint(ckpt_dir(name), dtype=dtype).model
        return cache[name, dtype]

    return get


@torch.no_grad()
def full_logits(model, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [T, vocab] of one sequence with a dense mask (causal by default)."""
    if mask is None:
        mask = causal_mask(pos, pos)
    return model(ids[None], pos[None], DenseAttention(mask[None, None], model.attn_scale))


def new_cache(model, slots: int = 3, max_len: int = 96) -> KVCache:
    cfg = model.cfg
    cache = KVCache(cfg.num_hidden_layers, slots, cfg.num_key_value_heads, max_len, cfg.head_dim,
                    model.dtype, model.device)
    # Poison: any read of a position that was never written turns the logits into NaN.
    cache.k.fill_(float("nan"))
    cache.v.fill_(float("nan"))
    return cache


@torch.no_grad()
def packed_forward(model, cache: KVCache, parts: list[tuple[int, torch.Tensor, int, torch.Tensor | None, int]],
                   logits_rows: torch.Tensor | None = None):
    """One packed forward. parts: (slot, ids, write_pos, mask or None, kv_end) per segment.

    Returns the logits and each segment's [start, end) rows in the packed batch."""
    segments, ids, pos, spans, start = [], [], [], [], 0
    for slot, seg_ids, write_pos, mask, kv_end in parts:
        n = seg_ids.shape[0]
        segments.append(Segment(slot=slot, start=start, length=n, write_pos=write_pos, kv_end=kv_end, mask=mask))
        ids.append(seg_ids)
        pos.append(torch.arange(write_pos, write_pos + n))
        spans.append((start, start + n))
        start += n
    attend = CachedAttention(cache, segments, model.attn_scale)
    logits = model(torch.cat(ids)[None], torch.cat(pos)[None], attend, logits_rows=logits_rows)
    return logits, spans


def causal_chunk_mask(a: int, b: int) -> torch.Tensor:
    """Causal mask for queries at positions [a, b) over keys [0, b)."""
    return causal_mask(torch.arange(a, b), torch.arange(b))


# ---------------------------------------------------------------------------------------------
# Against transformers


@pytest.mark.parametrize("name", ORACLE_VARIANTS)
def test_float64_matches_transformers(name, ckpt_dir, fast_model):
    model = fast_model(name, "float64")
    ref = hf_reference_model(ckpt_dir(name), torch.float64)
    ids = random_ids(T, model.cfg.vocab_size, seed=1)
    pos = torch.arange(T)
    expected = hf_logits(ref, ids, pos)
    assert expected.std() > 0.5, "logits too small for the comparison to mean anything"
    got = full_logits(model, ids, pos)
    assert got.dtype == torch.float64 and got.shape == (T, model.cfg.vocab_size)
    assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["qwen2", "llama-rope3-legacy"])
def test_float64_matches_transformers_at_large_positions(name, ckpt_dir, fast_model):
    """Positions that do not start at 0 (as for a continuation deep in a long context)."""
    model = fast_model(name, "float64")
    ref = hf_reference_model(ckpt_dir(name), torch.float64)
    ids = random_ids(24, model.cfg.vocab_size, seed=2)
    pos = torch.arange(700, 724)
    assert_close(full_logits(model, ids, pos), hf_logits(ref, ids, pos), rtol=1e-9, atol=1e-9)


def test_tied_checkpoint_shares_embedding(fast_model):
    tied, untied = fast_model("qwen2-tied"), fast_model("qwen2")
    assert tied.lm_head.weight.data_ptr() == tied.embed_tokens.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.embed_tokens.weight.data_ptr()
    assert not torch.equal(untied.lm_head.weight, untied.embed_tokens.weight)


def test_fast_dllm_config(fast_model):
    cfg = fast_model("fast_dllm").cfg
    assert cfg.model_type == "Fast_dLLM_Qwen"
    assert cfg.is_block_diffusion and cfg.bd_size == 32
    assert cfg.mask_token_id == cfg.vocab_size - 1
    assert cfg.attention_bias and cfg.rope_theta == 1e6


@pytest.mark.parametrize("name", ["qwen2", "llama", "llama-bias-headdim"])
def test_float32_matches_transformers(name, ckpt_dir, fast_model):
    model = fast_model(name, "float32")
    assert model.dtype == torch.float32
    ids = random_ids(T, model.cfg.vocab_size, seed=3)
    pos = torch.arange(T)
    got = full_logits(model, ids, pos)
    assert got.dtype == torch.float32
    ref64 = hf_logits(hf_reference_model(ckpt_dir(name), torch.float64), ids, pos)
    assert_close(got.double(), ref64, rtol=1e-4, atol=1e-4)
    ref32 = hf_logits(hf_reference_model(ckpt_dir(name), torch.float32), ids, pos)
    assert_close(got, ref32, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dtype,rel_tol,abs_tol", [("bfloat16", 0.03, 0.2), ("float16", 0.005, 0.03)])
@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_half_precision(name, dtype, rel_tol, abs_tol, ckpt_dir, fast_model):
    model = fast_model(name, dtype)
    torch_dtype = getattr(torch, dtype)
    assert all(p.dtype == torch_dtype for p in model.parameters())
    ids = random_ids(T, model.cfg.vocab_size, seed=4)
    pos = torch.arange(T)
    got = full_logits(model, ids, pos)
    assert got.dtype == torch_dtype
    assert torch.isfinite(got).all()
    ref = full_logits(fast_model(name, "float32"), ids, pos)
    err = (got.float() - ref).norm() / ref.norm()
    assert err < rel_tol, f"relative error {err:.4f} vs float32"
    assert (got.float() - ref).abs().max() < abs_tol
    # and close to transformers run in the same precision
    hf = hf_logits(hf_reference_model(ckpt_dir(name), torch_dtype), ids, pos)
    assert (got.float() - hf.float()).norm() / hf.float().norm() < rel_tol / 3


# ---------------------------------------------------------------------------------------------
# Attention back ends against each other (float64, exact up to rounding)

CHUNKS = [5, 1, 7, 3, 12, 1, 9]  # 38 tokens


@pytest.mark.parametrize("name", ["qwen2", "llama-bias-headdim"])
def test_chunked_cached_prefill_matches_full(name, fast_model):
    model = fast_model(name)
    n = sum(CHUNKS)
    ids, pos = random_ids(n, model.cfg.vocab_size, seed=5), torch.arange(n)
    full = full_logits(model, ids, pos)
    cache = new_cache(model)
    slot, a = 1, 0
    for size in CHUNKS:
        b = a + size
        logits, _ = packed_forward(model, cache, [(slot, ids[a:b], a, causal_chunk_mask(a, b), b)])
        assert_close(logits, full[a:b], rtol=1e-10, atol=1e-10, msg=lambda m: f"chunk [{a}, {b}): {m}")
        a = b
    # K/V landed in the slot at their absolute positions, and nowhere else
    assert not cache.k[:, slot, :, :n].isnan().any() and not cache.v[:, slot, :, :n].isnan().any()
    assert cache.k[:, slot, :, n:].isnan().all()
    assert cache.k[:, [0, 2]].isnan().all() and cache.v[:, [0, 2]].isnan().all()


def test_chunk_without_mask_is_not_causal(fast_model):
    """Guards the test above: a multi-token chunk without a causal mask must differ."""
    model = fast_model("qwen2")
    ids, pos = random_ids(12, model.cfg.vocab_size, seed=5), torch.arange(12)
    full = full_logits(model, ids, pos)
    logits, _ = packed_forward(model, new_cache(model), [(0, ids, 0, None, 12)])
    assert not torch.allclose(logits, full, rtol=1e-3, atol=1e-3)


def test_packed_sequences_match_each_alone(fast_model):
    model = fast_model("llama")
    V = model.cfg.vocab_size
    ids_a, ids_b = random_ids(21, V, seed=6), random_ids(17, V, seed=7)
    full_a = full_logits(model, ids_a, torch.arange(21))
    full_b = full_logits(model, ids_b, torch.arange(17))
    cache = new_cache(model)
    slot_a, slot_b = 2, 0
    # step 1: prefill the start of both sequences in one forward
    logits, (ra, rb) = packed_forward(model, cache, [
        (slot_a, ids_a[:9], 0, causal_chunk_mask(0, 9), 9),
        (slot_b, ids_b[:13], 0, causal_chunk_mask(0, 13), 13),
    ])
    assert_close(logits[ra[0]:ra[1]], full_a[:9], rtol=1e-10, atol=1e-10)
    assert_close(logits[rb[0]:rb[1]], full_b[:13], rtol=1e-10, atol=1e-10)
    # step 2: a one-token continuation of B packed before the rest of A, other order
    logits, (rb, ra) = packed_forward(model, cache, [
        (slot_b, ids_b[13:14], 13, None, 14),
        (slot_a, ids_a[9:21], 9, causal_chunk_mask(9, 21), 21),
    ])
    assert_close(logits[rb[0]:rb[1]], full_b[13:14], rtol=1e-10, atol=1e-10)
    assert_close(logits[ra[0]:ra[1]], full_a[9:21], rtol=1e-10, atol=1e-10)
    # step 3: the rest of B, asking only for the last row's logits
    rows = torch.tensor([2])
    logits, _ = packed_forward(model, cache, [(slot_b, ids_b[14:17], 14, causal_chunk_mask(14, 17), 17)],
                               logits_rows=rows)
    assert logits.shape == (1, V)
    assert_close(logits[0], full_b[16], rtol=1e-10, atol=1e-10)


def test_dense_batch_and_prefix_match_single(fast_model):
    """DenseAttention with a batch of two, and with a recorded K/V prefix."""
    model = fast_model("qwen2")
    V = model.cfg.vocab_size
    ids = torch.stack([random_ids(20, V, seed=8), random_ids(20, V, seed=9)])
    pos = torch.arange(20)
    singles = [full_logits(model, ids[i], pos) for i in range(2)]
    with torch.no_grad():
        batched = model(ids, pos.expand(2, -1), DenseAttention(causal_mask(pos, pos)[None, None], model.attn_scale))
    assert_close(batched, torch.cat(singles), rtol=1e-10, atol=1e-10)

    with torch.no_grad():
        rec = DenseAttention(causal_mask(pos[:8], pos[:8])[None, None], model.attn_scale, record=True)
        first = model(ids[:1, :8], pos[None, :8], rec)
        assert rec.kv is not None and len(rec.kv) == model.cfg.num_hidden_layers
        rest = model(ids[:1, 8:], pos[None, 8:],
                     DenseAttention(causal_mask(pos[8:], pos)[None, None], model.attn_scale, prefix=rec.kv))
    assert_close(torch.cat([first, rest]), singles[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["fast_dllm", "llama"])
def test_block_causal_full_matches_blockwise_cached(name, fast_model):
    model = fast_model(name)
    n, block = 37, 8  # last block partial
    ids, pos = random_ids(n, model.cfg.vocab_size, seed=10), torch.arange(n)
    full = full_logits(model, ids, pos, block_causal_mask(pos, pos, block))
    assert not torch.allclose(full, full_logits(model, ids, pos), rtol=1e-3, atol=1e-3), \
        "block-causal and causal logits should differ"
    cache = new_cache(model)
    for a in range(0, n, block):
        b = min(a + block, n)
        logits, _ = packed_forward(model, cache, [(1, ids[a:b], a, None, b)])
        assert_close(logits, full[a:b], rtol=1e-10, atol=1e-10, msg=lambda m: f"block [{a}, {b}): {m}")


def test_block_causal_mask_shape_and_values():
    q, k = torch.arange(8, 16), torch.arange(16)
    m = block_causal_mask(q, k, 4)
    assert m.shape == (8, 16) and m.dtype == torch.bool
    assert m[0, :12].all() and not m[0, 12:].any()       # query 8 (block 2) sees blocks 0..2
    assert m[4].all()                                      # query 12 (block 3) sees everything
    assert torch.equal(causal_mask(q, k), k[None, :] <= q[:, None])
