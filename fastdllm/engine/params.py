"""Decoding parameters shared by the planners and the engine (validated by the API)."""

from __future__ import annotations

from dataclasses import dataclass

from .sampling import Sampler


@dataclass(frozen=True)
class DecodeParams:
    mode: str                      # "diffusion" or "ar"
    sampler: Sampler
    stop_token_ids: frozenset[int]
    block_size: int = 32
    small_block_size: int = 8
    threshold: float = 0.9
    use_block_cache: bool = False
    mask_token_id: int | None = None
    acceptance: str = "threshold"  # which confident positions a forward keeps (``acceptance.py``)
    prefill_chunk: int = 512       # tokens per prefill forward (a multiple of block_size)
