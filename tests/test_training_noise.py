"""Noising: complementary pairs, token-shift targets, block padding, layout-independent draws."""

from __future__ import annotations

import torch

from fastdllm.training.data import Sample, micro_batch_indices
from fastdllm.training.noise import (ar_batch, diffusion_batch, draw_masked, noised_rows, pad_to_block,
                                     sample_generator)
from fastdllm.training.objective import prediction_rows

MASK = 99


def sample(n: int, prompt: int, seed: int = 0) -> Sample:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (n,), generator=g)
    lm = torch.ones(n, dtype=torch.bool)
    lm[:prompt] = False
    return Sample(ids, lm)


def test_complementary_rows_partition_loss_positions():
    for seed in range(20):
        s = sample(37, prompt=5, seed=seed)
        ids, lm = pad_to_block(s.ids, s.loss_mask, 8, MASK)
        masked = draw_masked(len(ids), 8, 1e-3, sample_generator(3, seed))
        (xa, ta), (xb, tb) = noised_rows(ids, lm, masked, MASK, complementary=True)
        assert not (ta & tb).any()                      # disjoint
        expected = lm.clone()
        expected[0] = False
        assert torch.equal(ta | tb, expected)           # cover every loss position once (position 0 never)
        for x, t in ((xa, ta), (xb, tb)):
            hit = (x == MASK) & lm
            assert torch.equal(t, hit & (torch.arange(len(x)) > 0))  # targets are the masked positions
            assert torch.equal(x[~lm[:len(x)] & (ids != MASK)], ids[~lm & (ids != MASK)])  # prompt stays clean


def test_without_complement_one_row():
    s = sample(16, 2)
    rows = noised_rows(s.ids, s.loss_mask, torch.ones(16, dtype=torch.bool), MASK, complementary=False)
    assert len(rows) == 1
    x, t = rows[0]
    assert (x[2:] == MASK).all() and torch.equal(x[:2], s.ids[:2])
    assert t[2:].all() and not t[:2].any()


def test_block_padding_is_mask_token_without_loss():
    s = sample(13, 3)
    ids, lm = pad_to_block(s.ids, s.loss_mask, 8, MASK)
    assert len(ids) == 16 and (ids[13:] == MASK).all() and not lm[13:].any()
    b = diffusion_batch([s, sample(30, 2, 1)], [0, 1], 8, MASK, 1e-3, 0, complementary=True)
    assert b.clean.shape == (4, 32) and b.noisy.shape == (4, 32)
    assert not b.targets[:2, 13:].any()                 # block + batch padding of the short sample
    assert (b.clean[:2, 13:] == MASK).all() and (b.noisy[:2, 13:] == MASK).all()
    assert b.tokens == 43


def test_per_block_ratio_shared_within_block():
    # eps close to 1 masks everything; eps = 0 with a block that drew t gives a fraction ~ t
    g = sample_generator(0, 0)
    assert draw_masked(64, 16, 0.999999, g).all()
    fractions = []
    for i in range(200):
        m = draw_masked(64, 64, 0.0, sample_generator(1, i))
        fractions.append(m.float().mean().item())
    fractions = torch.tensor(fractions)
    assert 0.4 < fractions.mean() < 0.6 and fractions.std() > 0.2  # t ~ U(0, 1) per block, not a fixed rate


def test_draws_depend_only_on_seed_and_index():
    a = draw_masked(32, 8, 1e-3, sample_generator(5, 17))
    b = draw_masked(32, 8, 1e-3, sample_generator(5, 17))
    c = draw_masked(32, 8, 1e-3, sample_generator(5, 18))
    assert torch.equal(a, b) and not torch.equal(a, c)
    s = [sample(20, 2, i) for i in range(4)]
    whole = diffusion_batch(s, [8, 9, 10, 11], 8, MASK, 1e-3, 0, True)
    halves = [diffusion_batch(s[:2], [8, 9], 8, MASK, 1e-3, 0, True),
              diffusion_batch(s[2:], [10, 11], 8, MASK, 1e-3, 0, True)]
    assert torch.equal(whole.noisy, torch.cat([h.noisy for h in halves]))


def test_micro_batch_layout_same_for_accum_and_processes():
    one = [micro_batch_indices(3, a, 0, micro=2, world=1, grad_accum=4) for a in range(4)]
    two = [micro_batch_indices(3, a, r, micro=2, world=2, grad_accum=2) for a in range(2) for r in range(2)]
    assert sorted(one) == sorted(two)
    assert sorted(i for mb in one for i in mb) == list(range(24, 32))


def test_token_shift_alignment():
    # targets at (row 0, pos 3) and (row 1, pos 4): predicted by output rows (0, 2) and (1, 3)
    targets = torch.zeros(2, 6, dtype=torch.bool)
    targets[0, 3] = targets[1, 4] = True
    rows, flat = prediction_rows(targets, row_len=12)  # diffusion: each output row is 2L = 12 long
    assert rows.tolist() == [0 * 12 + 2, 1 * 12 + 3]
    assert flat.tolist() == [0 * 6 + 3, 1 * 6 + 4]


def test_first_token_of_block_is_target_from_previous_block():
    s = Sample(torch.arange(16), torch.ones(16, dtype=torch.bool))
    (x, t), = noised_rows(s.ids, s.loss_mask, torch.ones(16, dtype=torch.bool), MASK, complementary=False)
    assert not t[0] and t[8]                            # position 8 opens block 1: a target
    rows, _ = prediction_rows(t[None], 32)
    assert 7 in rows.tolist()                           # ... predicted from the last position of block 0


def test_ar_batch_targets():
    s = [sample(5, 2), sample(3, 1)]
    b = ar_batch(s, pad_id=0)
    assert b.noisy is None and b.clean.shape == (2, 5)
    assert b.targets.tolist() == [[False, False, True, True, True], [False, True, True, False, False]]
