"""Log-likelihood of continuations, as multiple-choice and perplexity benchmarks need it.

Scoring reads the model autoregressively: a causal mask over ``context + continuation`` and the
log-probability of each continuation token from the output one position earlier. For a
block-diffusion model this is its AR reading (the mode its first token of every block uses);
the block-causal mask would let a position see the token it is asked to predict. Sequences
of a batch are right-padded, which a causal mask makes harmless, and logits are computed only
for the continuation positions.
"""

from __future__ import annotations

import torch

from ..model.attention import DenseAttention, causal_mask
from ..model import Transformer


@torch.inference_mode()
def score_continuations(model: Transformer, pairs: list[tuple[list[int], list[int]]], max_length: int,
                        batch_size: int = 8, pad_id: int = 0) -> list[tuple[float, bool]]:
    """For each ``(context_ids, continuation_ids)``: (sum of log p(continuation), is greedy).

    ``context_ids`` must be non-empty (prefix a BOS/EOS token for an empty context). When the
    pair is longer than ``max_length + 1`` tokens the context is cut from the left.
    """
    out: list[tuple[float, bool] | None] = [None] * len(pairs)
    rows = []
    for i, (ctx, cont) in enumerate(pairs):
        if not ctx or not cont:
            raise ValueError(f"pair {i}: context and continuation must both be non-empty")
        if len(cont) > max_length:
            raise ValueError(f"pair {i}: continuation of {len(cont)} tokens exceeds the context ({max_length})")
        full = (ctx + cont)[-(max_length + 1):]
        inp = full[:-1]                                   # the model reads this
        rows.append((i, inp, len(inp) - len(cont), cont))  # first scored output row, targets
    # longest first: similar lengths share a batch, the first batch shows the peak memory
    rows.sort(key=lambda r: -len(r[1]))
    device = model.device
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        T = max(len(r[1]) for r in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long, device=device)
        for j, (_, inp, _, _) in enumerate(chunk):
            ids[j, :len(inp)] = torch.tensor(inp, device=device)
        pos = torch.arange(T, device=device)
        attn = DenseAttention(causal_mask(pos, pos)[None, None], model.attn_scale)
        sel = torch.cat([j * T + torch.arange(s, s + len(c), device=device) for j, (_, _, s, c) in enumerate(chunk)])
        logits = model(ids, pos.expand(len(chunk), T), attn, logits_rows=sel)  # [n_scored, V]
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        targets = torch.tensor([t for *_, c in chunk for t in c], device=device)
        tok_lp = logp.gather(-1, targets[:, None])[:, 0]                      # [n_scored]
        greedy = logp.argmax(-1) == targets
        k = 0
        for i, _, _, cont in chunk:
            n = len(cont)
            out[i] = (float(tok_lp[k:k + n].sum()), bool(greedy[k:k + n].all()))
            k += n
    return out  # type: ignore[return-value]
