"""Per-stream attention for the block-diffusion training mask (the CPU path).

The dense back end runs SDPA over all (S + 1) L tokens of [x_t1 ; ... ; x_tS ; x_0] with the
boolean mask of ``masks.py``, although a noisy token can only ever see its own stream's block
and the clean copy: most of the (S + 1)^2 L^2 scores are thrown away. Here the same rule is
computed as S + 1 smaller attentions, batched into two SDPA calls per layer:

- the clean copy attends to itself, block-causally: L x L;
- every noisy stream attends to [x_0 ; its own x_t] with "clean blocks before mine, noisy
  block of mine": L x 2L each, the S streams stacked on the batch axis.

(1 + 2S) L^2 scores instead of (S + 1)^2 L^2: 5 against 9 for the complementary pair, 3
against 4 without it. The outputs equal the dense back end's (tests/test_training_objective);
the gradients follow through SDPA's own backward.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=16)
def split_masks(n: int, block_size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean [n, n], noisy [n, 2n]) bool masks, True = may attend; noisy keys are [x_0 ; x_t]."""
    return _split_masks(n, block_size, device)


def _split_masks(n: int, block_size: int, device: str,
                 open_pairs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.arange(n, device=device)
    blk = pos // block_size  # [n]
    before = blk[None, :] < blk[:, None]  # [n, n] key in an earlier block
    same = blk[None, :] == blk[:, None]  # [n, n]
    if open_pairs is not None:  # attention annealing (see masks.py)
        same = same & ((pos[None, :] <= pos[:, None]) | open_pairs.to(device))
    return before | same, torch.cat([before, same], dim=1)  # clean [n, n] block-causal, noisy [n, 2n]


class SplitAttention:
    """``attend(layer, q, k, v)`` for [x_t1 ; ... ; x_tS ; x_0] rows of ``n`` tokens per stream."""

    def __init__(self, n: int, block_size: int, device: torch.device, scale: float, streams: int = 1,
                 open_pairs: torch.Tensor | None = None):
        self.n, self.streams, self.scale = n, streams, scale
        if open_pairs is None:
            self.clean_mask, self.noisy_mask = split_masks(n, block_size, str(device))
        else:
            self.clean_mask, self.noisy_mask = _split_masks(n, block_size, str(device), open_pairs)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n, S = self.n, self.streams
        B, T, Hq, D = q.shape  # T = (S + 1) n
        Hkv = k.shape[2]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        kc, vc = k[:, :, S * n:], v[:, :, S * n:]  # [B, Hkv, n, D]
        clean = F.scaled_dot_product_attention(q[:, :, S * n:], kc, vc, attn_mask=self.clean_mask,
                                               scale=self.scale, enable_gqa=True)  # [B, Hq, n, D]

        def by_stream(t: torch.Tensor, h: int) -> torch.Tensor:  # [B, h, S n, D] -> [B S, h, n, D]
            return t[:, :, :S * n].reshape(B, h, S, n, D).transpose(1, 2).reshape(B * S, h, n, D)

        def clean_per_stream(t: torch.Tensor) -> torch.Tensor:  # [B, Hkv, n, D] -> [B S, Hkv, n, D]
            return t[:, None].expand(B, S, Hkv, n, D).reshape(B * S, Hkv, n, D)

        kn = torch.cat([clean_per_stream(kc), by_stream(k, Hkv)], dim=2)  # [B S, Hkv, 2n, D]
        vn = torch.cat([clean_per_stream(vc), by_stream(v, Hkv)], dim=2)  # [B S, Hkv, 2n, D]
        noisy = F.scaled_dot_product_attention(by_stream(q, Hq), kn, vn, attn_mask=self.noisy_mask,
                                               scale=self.scale, enable_gqa=True)  # [B S, Hq, n, D]
        noisy = noisy.reshape(B, S, Hq, n, D).transpose(1, 2).reshape(B, Hq, S * n, D)
        o = torch.cat([noisy, clean], dim=2)  # [B, Hq, T, D]
        return o.transpose(1, 2).reshape(B, T, Hq * D)
