"""Noising for block diffusion: per-block mask ratios, complementary pairs, shifted targets.

Every random draw for a sample comes from its own generator seeded by (seed, global sample
index), so the masks do not depend on how samples are spread over processes, micro-batches
or restarts. A target is a (row, position i) pair: the token x_0[i], predicted from the
model's output at position i - 1 of the noisy half (token shift; position 0 is never one).

``MaskRates`` says how a block's mask ratio t is drawn (the recipe's U(eps, 1), a clipped
range, or a bell-shaped logit-normal) and whether later positions of a block are masked more
often than earlier ones (``tilt``), as left-to-right sub-block decoding meets them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MIX = 0x9E3779B97F4A7C15  # spreads consecutive (seed, index) pairs over the seed space


def sample_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * _MIX + index) % (2 ** 63))


RATES = ("uniform", "clipped", "logit_normal")


@dataclass(frozen=True)
class MaskRates:
    """How the per-block mask ratio t is drawn and spread over a block's positions.

    - ``uniform``: t ~ U(eps, 1) (the Fast-dLLM v2 recipe);
    - ``clipped``: t ~ U(low, high) (BD3-LM's clipped schedules: no nearly clean or nearly
      all-masked blocks, whose losses carry little signal);
    - ``logit_normal``: t = eps + (1 - eps) sigmoid(mean + std z), z ~ N(0, 1) (bell-shaped).

    ``tilt`` in [0, 1]: position j of a block of B is masked with probability
    min(1, t (1 + tilt (2 j / (B - 1) - 1))): the same mean over the block, later positions more
    often (at tilt 1 the first position is never masked and the last at twice the rate).
    """

    eps: float = 1e-3
    rate: str = "uniform"
    low: float = 0.0
    high: float = 1.0
    mean: float = 0.0
    std: float = 1.0
    tilt: float = 0.0

    def block_ratios(self, blocks: int, gen: torch.Generator) -> torch.Tensor:
        """One mask ratio per block: [blocks] float in [0, 1]."""
        if self.rate == "logit_normal":
            z = torch.randn(blocks, generator=gen)  # [blocks]
            return self.eps + (1 - self.eps) * torch.sigmoid(self.mean + self.std * z)
        t = torch.rand(blocks, generator=gen)  # [blocks]
        if self.rate == "clipped":
            return self.low + (self.high - self.low) * t
        if self.rate != "uniform":
            raise ValueError(f"mask rate must be one of {', '.join(RATES)}, got {self.rate!r}")
        return (1 - self.eps) * t + self.eps

    def position_weights(self, block_size: int) -> torch.Tensor:
        """[block_size] multipliers of a block's ratio, position by position (mean 1)."""
        if block_size == 1:
            return torch.ones(1)
        u = torch.arange(block_size, dtype=torch.float32) / (block_size - 1)  # [B] in [0, 1]
        return 1 + self.tilt * (2 * u - 1)


def draw_masked(n: int, block_size: int, rates: MaskRates | float, gen: torch.Generator) -> torch.Tensor:
    """Which of ``n`` positions to mask, with one ratio per block: [n] bool (n % block_size == 0).

    ``rates`` may be a bare eps (the recipe's t ~ U(eps, 1)).
    """
    if not isinstance(rates, MaskRates):
        rates = MaskRates(eps=rates)
    p = rates.block_ratios(n // block_size, gen).repeat_interleave(block_size)  # [n]
    if rates.tilt:
        p = (p * rates.position_weights(block_size).repeat(n // block_size)).clamp(max=1.0)  # [n]
    u = torch.rand(n, generator=gen)  # [n]
    return u < p


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
    block_size: int | None = None  # the block size of the noise and the attention (None: the objective's)
    # attention annealing: [L, L] bool, which in-block pairs (q, k > q) are open; None: all of them
    open_pairs: torch.Tensor | None = None
    ar_targets: torch.Tensor | None = None  # [R / streams, L] bool: the auxiliary AR loss's targets in x_0

    @property
    def n_targets(self) -> int:
        return int(self.targets.sum())

    @property
    def n_ar_targets(self) -> int:
        return 0 if self.ar_targets is None else int(self.ar_targets.sum())


def _stack(rows: list[torch.Tensor], length: int, fill) -> torch.Tensor:
    out = rows[0].new_full((len(rows), length), fill)
    for r, row in enumerate(rows):
        out[r, :len(row)] = row
    return out


def diffusion_batch(samples, indices: list[int], block_size: int, mask_id: int, rates: MaskRates | float,
                    seed: int, complementary: bool, noise_block: int | None = None,
                    open_pairs: torch.Tensor | None = None, ar_targets: bool = False) -> Batch:
    """Samples (each with ``ids``, ``loss_mask``, ``length``) at global indices -> a noised Batch.

    Samples are padded to whole blocks of ``block_size``; the noise and the attention use blocks
    of ``noise_block`` (a divisor of it, for a block-size curriculum; default ``block_size``).
    ``open_pairs`` ([>= L, >= L] bool) is the attention annealing's draw for this step;
    ``ar_targets`` adds the clean rows' next-token targets for the auxiliary AR loss.
    """
    nb = noise_block or block_size
    clean, noisy, targets, ar, tokens = [], [], [], [], 0
    for s, g in zip(samples, indices):
        ids, lm = pad_to_block(s.ids, s.loss_mask, block_size, mask_id)
        masked = draw_masked(len(ids), nb, rates, sample_generator(seed, g))
        for x_t, tg in noised_rows(ids, lm, masked, mask_id, complementary):
            clean.append(ids)
            noisy.append(x_t)
            targets.append(tg)
        if ar_targets:
            ar.append(lm & (torch.arange(len(ids)) > 0))  # x_0[i] from position i - 1 of the causal pass
        tokens += s.length
    L = max(len(r) for r in clean)  # a multiple of block_size
    return Batch(_stack(clean, L, mask_id), _stack(targets, L, False), _stack(noisy, L, mask_id), tokens,
                 2 if complementary else 1, block_size=nb,
                 open_pairs=None if open_pairs is None else open_pairs[:L, :L],
                 ar_targets=_stack(ar, L, False) if ar_targets else None)


def block_size_at(step: int, sizes: list[int] | tuple[int, ...], steps: int, final: int) -> int:
    """Block-size curriculum: ``sizes`` in turn, each for an equal share of the first ``steps``
    steps, then ``final``."""
    if not sizes or step >= steps:
        return final
    return sizes[step * len(sizes) // steps]


def open_pairs_at(step: int, steps: int, n: int, seed: int) -> torch.Tensor | None:
    """Attention annealing: which in-block pairs (q, k) with k > q attend at ``step`` ([n, n] bool).

    Each such pair opens with probability step / ``steps`` (a fresh draw per step, seeded by
    ``seed`` and the step, the same for every micro-batch and process): none at step 0 (the
    in-block attention is causal, as in the AR model), all from ``steps`` on (returns None: the
    block-diffusion mask).
    """
    if step >= steps:
        return None
    u = torch.rand(n, n, generator=sample_generator(seed + _ANNEAL_STREAM, step))  # [n, n]
    return u < step / steps


_ANNEAL_STREAM = 0x5EED  # a seed offset, so the annealing draws never repeat the sample noise draws


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
