"""Samplers: turn logits into (token, confidence) pairs.

Confidence is what the block-diffusion threshold is compared with. Greedy confidence is the
softmax probability of the argmax over the full vocabulary, as in the reference decoder;
the mask token is never chosen. With temperature > 0 the distribution is temperature-scaled,
top-k and top-p filtered and renormalised, and confidence is the sampled token's probability
under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import InvalidRequestError

Sampler = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def validate(self) -> None:
        if not (self.temperature >= 0):
            raise InvalidRequestError(f"temperature must be >= 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequestError(f"top_k must be >= 0, got {self.top_k}")


def _probs_dtype(logits: torch.Tensor) -> torch.Tensor:
    # half-precision softmax loses the digits a 0.9 threshold depends on
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def greedy(mask_token_id: int | None) -> Sampler:
    def sample(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(_probs_dtype(logits), dim=-1)  # [n, V]
        if mask_token_id is None or mask_token_id >= probs.shape[-1]:
            conf, tokens = probs.max(dim=-1)
            return tokens, conf
        choice = probs.clone()
        choice[:, mask_token_id] = -1.0
        tokens = choice.argmax(dim=-1)  # [n]
        return tokens, probs.gather(-1, tokens[:, None])[:, 0]
    return sample


def make_sampler(params: SamplingParams, mask_token_id: int | None, device: torch.device | str = "cpu") -> Sampler:
    """A sampler for ``params``; it owns its random generator (seeded per call)."""
    params.validate()
    if params.temperature == 0:
        return greedy(mask_token_id)
    gen = torch.Generator(device=device)
    gen.manual_seed(params.seed if params.seed is not None else int(torch.seed() % (2**63)))

    def sample(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scaled = logits.float() / params.temperature  # [n, V]
        if mask_token_id is not None and mask_token_id < scaled.shape[-1]:
            scaled[:, mask_token_id] = float("-inf")
        if params.top_k > 0 and params.top_k < scaled.shape[-1]:
            kth = scaled.topk(params.top_k, dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) > params.top_p
            drop[:, 1:] = drop[:, :-1].clone()  # keep the token that crosses top_p
            drop[:, 0] = False
            probs = probs.masked_fill(drop.scatter(-1, order, drop), 0.0)
            probs = probs / probs.sum(-1, keepdim=True)
        tokens = torch.multinomial(probs, 1, generator=gen)[:, 0]  # [n]
        return tokens, probs.gather(-1, tokens[:, None])[:, 0]
    return sample
