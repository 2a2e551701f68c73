"""The block-diffusion training attention mask over [x_t ; x_0] (length 2L).

Index q < L is a noisy token, q >= L a clean one; both halves count blocks from their own
start. A noisy token in block b sees the noisy tokens of block b and the clean tokens of
blocks < b; a clean token in block b sees the clean tokens of blocks <= b. The same rule is
given twice: as a dense boolean matrix (SDPA) and as a flex-attention ``mask_mod``.
"""

from __future__ import annotations

from typing import Callable

import torch


def _allowed(q: torch.Tensor, k: torch.Tensor, n: int, block_size: int) -> torch.Tensor:
    q_clean, k_clean = q >= n, k >= n
    bq = torch.where(q_clean, q - n, q) // block_size
    bk = torch.where(k_clean, k - n, k) // block_size
    noisy_same_block = ~q_clean & ~k_clean & (bq == bk)
    noisy_sees_past_clean = ~q_clean & k_clean & (bk < bq)
    clean_block_causal = q_clean & k_clean & (bk <= bq)
    return noisy_same_block | noisy_sees_past_clean | clean_block_causal


def block_diffusion_mask(n: int, block_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Dense mask for a sequence of ``n`` tokens: [2n, 2n] bool, True = may attend."""
    idx = torch.arange(2 * n, device=device)
    return _allowed(idx[:, None], idx[None, :], n, block_size)


def block_diffusion_mask_mod(n: int, block_size: int) -> Callable:
    """The same rule as a flex-attention ``mask_mod(b, h, q_idx, kv_idx)``."""

    def mask_mod(b, h, q_idx, kv_idx):
        return _allowed(q_idx, kv_idx, n, block_size)

    return mask_mod
