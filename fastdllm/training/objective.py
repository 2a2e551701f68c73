"""The training losses as an ``nn.Module`` (so DDP/FSDP see one forward per micro-batch).

Diffusion: the model reads [x_t ; x_0] (2L tokens, positions 0..L-1 twice) under the
block-diffusion mask, or for a complementary pair [x_t1 ; x_t2 ; x_0] (3L tokens: the clean
copy is shared, see ``masks.py``); the vocabulary projection runs only on the noisy rows that
predict a target (row i - 1 for the target at i), so the [R, 2L, V] logits never exist.
AR: the model reads x_0 under the causal mask, same gathering. Both return the *sum* of the
cross-entropies; the trainer divides by the global target count.

A diffusion batch with ``ar_targets`` (the auxiliary AR loss) also runs the clean samples
through the model once more under the causal mask and returns the pair (diffusion sum, AR
sum): one extra forward and backward over the clean tokens (L beside the 3L of a
complementary pair).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..model.attention import DenseAttention, causal_mask
from .masks import block_diffusion_mask
from .noise import Batch


@lru_cache(maxsize=16)
def _dense_mask(n: int, block_size: int | None, device: str, streams: int = 1) -> torch.Tensor:
    if block_size is None:
        pos = torch.arange(n, device=device)
        return causal_mask(pos, pos)[None, None]  # [1, 1, n, n]
    return block_diffusion_mask(n, block_size, device, streams)[None, None]  # [1, 1, (S+1)n, (S+1)n]


def prediction_rows(targets: torch.Tensor, row_len: int, streams: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat rows of the [R / streams, row_len] output that predict each target, and the targets' (r, i).

    targets: [R, L] bool -> (rows [N], flat target index r * L + i [N]). Noisy row r is stream
    r % streams of output row r // streams: row = (r // streams) * row_len + (r % streams) * L + i - 1.
    """
    r, i = targets.nonzero(as_tuple=True)  # [N], [N]
    L = targets.shape[1]
    return (r // streams) * row_len + (r % streams) * L + i - 1, r * L + i


def _ce_sum(head: nn.Module, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), labels, reduction="sum")  # head(h): [n, V]


def chunked_ce_sum(head: nn.Module, h: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """Sum of CE(head(h), labels); above ``chunk`` rows each chunk's logits are recomputed in backward."""
    if h.shape[0] <= chunk:
        return _ce_sum(head, h, labels)
    total = h.new_zeros((), dtype=torch.float32)
    for hs, ls in zip(h.split(chunk), labels.split(chunk)):
        if torch.is_grad_enabled():
            total = total + checkpoint(_ce_sum, head, hs, ls, use_reentrant=False)
        else:
            total = total + _ce_sum(head, hs, ls)
    return total


class TrainingObjective(nn.Module):
    """``forward(batch) -> summed CE`` over the batch's targets, for ``model`` (a fastdllm Transformer)."""

    def __init__(self, model: nn.Module, objective: str = "diffusion", block_size: int = 32,
                 attention: str = "dense", loss_chunk_size: int = 4096):
        super().__init__()
        if objective not in ("diffusion", "ar"):
            raise ValueError(f"objective must be 'diffusion' or 'ar', got {objective!r}")
        if attention not in ("dense", "flex", "split"):
            raise ValueError(f"attention must be 'dense', 'flex' or 'split', got {attention!r}")
        self.model = model
        self.objective = objective
        self.block_size = block_size
        self.attention = attention
        self.loss_chunk_size = loss_chunk_size

    def attend(self, n: int, device: torch.device, streams: int = 1, block_size: int | None = None,
               open_pairs: torch.Tensor | None = None):
        scale = self.model.attn_scale
        if self.objective == "ar":
            return DenseAttention(_dense_mask(n, None, str(device)), scale)
        bs = block_size or self.block_size
        if self.attention == "flex":
            from .flex import FlexAttention

            return FlexAttention(n, bs, device, scale, streams=streams, open_pairs=open_pairs)
        if self.attention == "split":
            from .split import SplitAttention

            return SplitAttention(n, bs, device, scale, streams=streams, open_pairs=open_pairs)
        if open_pairs is not None:  # a fresh draw every step: not cached
            return DenseAttention(block_diffusion_mask(n, bs, device, streams, open_pairs)[None, None], scale)
        return DenseAttention(_dense_mask(n, bs, str(device), streams), scale)

    def hidden(self, batch: Batch) -> torch.Tensor:
        """Final hidden states: [R / S, (S + 1) L, H] (diffusion, S = batch.streams) or [R, L, H] (AR)."""
        R, L = batch.clean.shape
        device = self.model.device
        pos = torch.arange(L, device=device)
        S = batch.streams if batch.noisy is not None else 1
        if batch.noisy is None:
            ids, positions = batch.clean, pos
        else:
            noisy = batch.noisy.reshape(R // S, S * L)  # the S noisy copies of a sample side by side
            ids = torch.cat([noisy, batch.clean[::S]], dim=1)  # [R / S, (S + 1) L]
            positions = pos.repeat(S + 1)  # [(S + 1) L]
        ids = ids.to(device)
        attend = self.attend(L, device, S, batch.block_size, batch.open_pairs)
        return self.model.hidden_states(ids, positions[None].expand(ids.shape[0], -1), attend)

    def _ce(self, h: torch.Tensor, targets: torch.Tensor, clean: torch.Tensor, streams: int) -> torch.Tensor:
        rows, flat = prediction_rows(targets, h.shape[1], streams)
        labels = clean.flatten()[flat].to(h.device)  # [N]
        picked = h.flatten(0, 1).index_select(0, rows.to(h.device))  # [N, H]
        return chunked_ce_sum(self.model.lm_head, picked, labels, self.loss_chunk_size)

    def forward(self, batch: Batch) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(batch)  # [R / S, T, H]
        diffusion = batch.noisy is not None
        loss = self._ce(h, batch.targets, batch.clean, batch.streams if diffusion else 1)
        if not diffusion or batch.ar_targets is None:
            return loss
        clean = batch.clean[::batch.streams]  # [R / S, L] one clean row per sample
        L, device = clean.shape[1], self.model.device
        pos = torch.arange(L, device=device)
        h_ar = self.model.hidden_states(clean.to(device), pos[None].expand(clean.shape[0], -1),
                                        DenseAttention(_dense_mask(L, None, str(device)), self.model.attn_scale))
        return loss, self._ce(h_ar, batch.ar_targets, clean, 1)  # h_ar: [R / S, L, H]
