"""The block-diffusion training attention mask over [x_t ; x_0] (length 2L), or [x_t1 ; x_t2 ; x_0].

Index q < L is a noisy token, q >= L a clean one; both halves count blocks from their own
start. A noisy token in block b sees the noisy tokens of block b and the clean tokens of
blocks < b; a clean token in block b sees the clean tokens of blocks <= b. The same rule is
given twice: as a dense boolean matrix (SDPA) and as a flex-attention ``mask_mod``.

With ``streams`` S > 1, S noisy copies of a sample (a draw and its complement) share one clean
copy: the sequence is [x_t1 ; ... ; x_tS ; x_0] ((S + 1) L tokens) and a noisy stream never
sees another one, so each stream's outputs are those of its own [x_t ; x_0]. The clean
stream is computed once instead of S times (for the complementary pair, 3L tokens instead of
4L).

Attention annealing (``open_pairs``, [n, n] bool over positions): inside a block, a token at
position q sees one at k > q of the same stream only where ``open_pairs[q, k]``; with none open
the in-block attention is causal (the AR model's), with all open (``None``) it is the mask
above.
"""

from __future__ import annotations

from typing import Callable

import torch


def _allowed(q: torch.Tensor, k: torch.Tensor, n: int, block_size: int, streams: int = 1,
             open_pairs: torch.Tensor | None = None) -> torch.Tensor:
    sq, sk = q // n, k // n  # stream of each index: 0..streams-1 noisy, streams clean
    q_clean, k_clean = sq == streams, sk == streams
    pq, pk = q % n, k % n
    bq, bk = pq // block_size, pk // block_size
    in_block = bq == bk
    if open_pairs is not None:  # annealing: later tokens of the block only where the pair is open
        in_block = in_block & ((pk <= pq) | open_pairs[pq, pk])
    noisy_same_block = ~q_clean & (sq == sk) & in_block
    noisy_sees_past_clean = ~q_clean & k_clean & (bk < bq)
    clean_block_causal = q_clean & k_clean & ((bk < bq) | in_block)
    return noisy_same_block | noisy_sees_past_clean | clean_block_causal


def block_diffusion_mask(n: int, block_size: int, device: torch.device | str | None = None,
                         streams: int = 1, open_pairs: torch.Tensor | None = None) -> torch.Tensor:
    """Dense mask for a sequence of ``n`` tokens: [(streams + 1) n, (streams + 1) n] bool, True = may attend."""
    idx = torch.arange((streams + 1) * n, device=device)
    if open_pairs is not None:
        open_pairs = open_pairs.to(idx.device)
    return _allowed(idx[:, None], idx[None, :], n, block_size, streams, open_pairs)


def block_diffusion_mask_mod(n: int, block_size: int, streams: int = 1,
                             open_pairs: torch.Tensor | None = None) -> Callable:
    """The same rule as a flex-attention ``mask_mod(b, h, q_idx, kv_idx)``."""

    def mask_mod(b, h, q_idx, kv_idx):
        return _allowed(q_idx, kv_idx, n, block_size, streams, open_pairs)

    return mask_mod
