"""The block-diffusion training mask against its rule, written out as a slow double loop."""

from __future__ import annotations

import pytest
import torch

from fastdllm.training.masks import block_diffusion_mask, block_diffusion_mask_mod


def rule(n: int, block_size: int) -> torch.Tensor:
    """[x_t ; x_0]: noisy q in block b sees noisy block b and clean blocks < b; clean q sees clean blocks <= b."""
    out = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    for q in range(2 * n):
        for k in range(2 * n):
            q_clean, k_clean = q >= n, k >= n
            bq = (q - n if q_clean else q) // block_size
            bk = (k - n if k_clean else k) // block_size
            if not q_clean and not k_clean:
                out[q, k] = bq == bk
            elif not q_clean and k_clean:
                out[q, k] = bk < bq
            elif q_clean and k_clean:
                out[q, k] = bk <= bq
            else:  # a clean token never sees a noisy one
                out[q, k] = False
    return out


@pytest.mark.parametrize("n,block_size", [(8, 4), (12, 4), (16, 16), (32, 8), (6, 1), (10, 4)])
def test_dense_mask_matches_rule(n, block_size):
    assert torch.equal(block_diffusion_mask(n, block_size), rule(n, block_size))


@pytest.mark.parametrize("n,block_size", [(8, 4), (24, 8)])
def test_mask_mod_matches_rule(n, block_size):
    q = torch.arange(2 * n)[:, None].expand(2 * n, 2 * n)
    k = torch.arange(2 * n)[None, :].expand(2 * n, 2 * n)
    got = block_diffusion_mask_mod(n, block_size)(0, 0, q, k)
    assert torch.equal(got, rule(n, block_size))


def test_mask_structure_examples():
    m = block_diffusion_mask(8, 4)  # blocks: noisy 0-3 | 4-7, clean 8-11 | 12-15
    assert m[5, 4] and m[5, 7]          # noisy block 1 is bidirectional
    assert not m[5, 0]                  # noisy block 1 does not see noisy block 0
    assert m[5, 8] and m[5, 11]         # ... but sees clean block 0
    assert not m[5, 12]                 # ... not its own clean block
    assert not m[1, 8]                  # noisy block 0 sees no clean token
    assert m[13, 8] and m[13, 15]       # clean block 1: block-causal over clean
    assert not m[9, 12]                 # clean block 0 does not see clean block 1
    assert not m[12, 4]                 # clean never sees noisy
    assert m.diagonal().all()           # every token sees itself: no empty softmax row


@pytest.mark.parametrize("n,block_size", [(8, 4), (12, 4), (16, 8)])
def test_two_noisy_streams_share_one_clean_copy(n, block_size):
    """[x_t1 ; x_t2 ; x_0]: each noisy stream sees itself and the clean copy exactly as in its own [x_t ; x_0],
    and never the other noisy stream."""
    m = block_diffusion_mask(n, block_size, streams=2)  # [3n, 3n]
    one = rule(n, block_size)  # [2n, 2n]
    noisy, clean = [slice(0, n), slice(n, 2 * n)], slice(2 * n, 3 * n)
    for s, other in ((noisy[0], noisy[1]), (noisy[1], noisy[0])):
        assert torch.equal(m[s, s], one[:n, :n]) and torch.equal(m[s, clean], one[:n, n:])
        assert not m[s, other].any() and not m[clean, s].any()
    assert torch.equal(m[clean, clean], one[n:, n:])
    q = torch.arange(3 * n)[:, None].expand(3 * n, 3 * n)
    k = torch.arange(3 * n)[None, :].expand(3 * n, 3 * n)
    assert torch.equal(block_diffusion_mask_mod(n, block_size, streams=2)(0, 0, q, k), m)
