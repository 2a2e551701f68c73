"""Noising for block diffusion: per-block mask ratios, complementary pairs, shifted targets.

Every random draw for a sample comes from its own generator seeded by (seed, global sample
index), so the masks do not depend on how samples are spread over processes, micro-batches
or restarts. A target is a (row, position i) pair: the token x_0[i], predicted from the
model's output at position i - 1 of the noisy half (token shift; position 0 is never one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MIX = 0x9E3779B97F4A7C15  # spreads consecutive (seed, index) pairs over the seed space


def sample_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * _MIX + index) % (2 ** 63))


def draw_masked(n: int, block_size: int, eps: float, gen: torch.Generator) -> torch.Tensor:
    """Which of ``n`` positions a per-block ratio t ~ U(eps, 1) masks: [n] bool (n % block_size == 0)."""
    t = torch.rand(n // block_size, generator=gen)  # [blocks]
    p = (1 - eps) * t + eps
    u = torch.rand(n, generator=gen)  # [n]
    return u < p.repeat_interleave(block_size)


def pad_to_block(ids: torch.Tensor, loss_mask: torch.Tensor, block_size: int, pad_id: int):
    """Pad a sample to a multiple of ``block_size`` with ``pad_id`` (no loss on the padding)."""
    extra = -len(ids) % block_size
    if not extra:
        return ids, loss_mask
    return (torch.cat([ids, ids.new_full((extra,), pad_id)]),
            torch.cat([loss_mask, loss_mask.new_zeros(extra)]))


def noised_rows(ids: torch.Tensor, loss_mask: torch.Tensor, masked: torch.Tensor, mask_id: int,
                complementary: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x_t [n], targets [n] bool) for the draw and, if asked, for its complement.

    Only loss-bearing tokens are ever masked (prompt tokens stay visible, as in the reference).
    """
    rows = []
    for m in ([masked, ~masked] if complementary else [masked]):
        hit = m & loss_mask  # [n]
        x_t = torch.where(hit, torch.full_like(ids, mask_id), ids)
        targets = hit.clone()
        targets[0] = False  # nothing precedes position 0
        rows.append((x_t, targets))
    return rows


@dataclass
class Batch:
    """One micro-batch. ``noisy`` is None for the AR objective (then ``clean`` is the input).

    ``streams``: consecutive noisy rows that come from the same sample (2 for a draw and its
    complement), so the model can run them beside one shared clean copy (see ``masks.py``).
    """

    clean: torch.Tensor            # [R, L] x_0 (row r holds the clean sample of noisy row r)
    targets: torch.Tensor          # [R, L] bool: x_0[r, i] is predicted from position i - 1
    noisy: torch.Tensor | None     # [R, L] x_t
    tokens: int                    # real (non-padding) tokens of the samples, each counted once
    streams: int = 1

    @property
    def n_targets(self) -> int:
        return int(self.targets.sum())


def _stack(rows: list[torch.Tensor], length: int, fill) -> torch.Tensor:
    out = rows[0].new_full((len(rows), length), fill)
    for r, row in enumerate(rows):
        out[r, :len(row)] = row
    return out


def diffusion_batch(samples, indices: list[int], block_size: int, mask_id: int, eps: float, seed: int,
                    complementary: bool) -> Batch:
    """Samples (each with ``ids``, ``loss_mask``, ``length``) at global indices -> a noised Batch."""
    clean, noisy, targets, tokens = [], [], [], 0
    for s, g in zip(samples, indices):
        ids, lm = pad_to_block(s.ids, s.loss_mask, block_size, mask_id)
        masked = draw_masked(len(ids), block_size, eps, sample_generator(seed, g))
        for x_t, tg in noised_rows(ids, lm, masked, mask_id, complementary):
            clean.append(ids)
            noisy.append(x_t)
            targets.append(tg)
        tokens += s.length
    L = max(len(r) for r in clean)  # a multiple of block_size
    return Batch(_stack(clean, L, mask_id), _stack(targets, L, False), _stack(noisy, L, mask_id), tokens,
                 2 if complementary else 1)


def ar_batch(samples, pad_id: int) -> Batch:
    """Plain causal-LM micro-batch: targets are the loss-bearing tokens after position 0."""
    clean, targets, tokens = [], [], 0
    for s in samples:
        tg = s.loss_mask.clone()
        tg[0] = False
        clean.append(s.ids)
        targets.append(tg)
        tokens += s.length
    L = max(len(r) for r in clean)
    return Batch(_stack(clean, L, pad_id), _stack(targets, L, False), None, tokens)
