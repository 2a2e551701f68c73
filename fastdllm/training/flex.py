"""Flex-attention back end for the training mask (the CUDA path).

A ``BlockMask`` built once per (length, block size, device) from the ``mask_mod`` skips the
masked tiles entirely. On the CPU, torch runs flex attention forward only (no backward), so
training there uses the dense mask; the two agree on the loss (tests/test_training_objective).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .masks import block_diffusion_mask_mod


def available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:  # pragma: no cover - torch < 2.5
        return False
    return True


@lru_cache(maxsize=16)
def block_mask(n: int, block_size: int, device: str, streams: int = 1):
    """BlockMask for [x_t ; x_0] (or ``streams`` noisy copies and x_0) of ``n`` tokens each (every row and head)."""
    from torch.nn.attention.flex_attention import create_block_mask

    total = (streams + 1) * n
    return create_block_mask(block_diffusion_mask_mod(n, block_size, streams), None, None, total, total,
                             device=device, _compile=device.startswith("cuda"))


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


class FlexAttention:
    """``attend(layer, q, k, v)`` for the model, with the block-diffusion BlockMask."""

    def __init__(self, n: int, block_size: int, device: torch.device, scale: float, compiled: bool | None = None,
                 streams: int = 1, open_pairs: torch.Tensor | None = None):
        if open_pairs is None:
            self.mask = block_mask(n, block_size, str(device), streams)
        else:  # attention annealing: a fresh draw every step, so no cache
            from torch.nn.attention.flex_attention import create_block_mask

            total = (streams + 1) * n
            mod = block_diffusion_mask_mod(n, block_size, streams, open_pairs.to(device))
            self.mask = create_block_mask(mod, None, None, total, total, device=str(device),
                                          _compile=device.type == "cuda")
        self.scale = scale
        self.compiled = device.type == "cuda" if compiled is None else compiled

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention.flex_attention import flex_attention

        fn = _compiled_flex() if self.compiled else flex_attention
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, (S+1)n, D]
        o = fn(q, k, v, block_mask=self.mask, scale=self.scale, enable_gqa=True)  # [B, Hq, (S+1)n, D]
        return o.transpose(1, 2).flatten(2)  # [B, (S+1)n, Hq*D]
