"""Grow a model's vocabulary: new embedding (and untied ``lm_head``) rows start as the mean row.

Used when training adds a mask token, and when an adapter that added one is loaded.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def init_rows(model: nn.Module, old_v: int, new_v: int, mask_id: int) -> None:
    """Grow embedding/lm_head from ``old_v`` to ``new_v`` rows; new rows and ``mask_id`` = mean row."""
    emb = model.embed_tokens.weight
    tied = model.lm_head.weight is emb
    mats = [("embed_tokens", emb)] + ([] if tied else [("lm_head", model.lm_head.weight)])
    for name, w in mats:
        mean = w[:old_v].float().mean(0).to(w.dtype)  # [H]
        if new_v > old_v:
            grown = torch.cat([w.detach(), mean.expand(new_v - old_v, -1)])  # [new_v, H]
        else:
            grown = w.detach().clone()
        grown[mask_id] = mean
        param = nn.Parameter(grown, requires_grad=w.requires_grad)
        if name == "embed_tokens":
            model.embed_tokens.weight = param
            model.embed_tokens.num_embeddings = new_v
        else:
            model.lm_head.weight = param
            model.lm_head.out_features = new_v
    if tied:
        model.lm_head.weight = model.embed_tokens.weight
        model.lm_head.out_features = new_v
    model.cfg.vocab_size = new_v
    model.cfg.raw["vocab_size"] = new_v
