"""Naive, cache-free decoding: the oracle the engine is tested against.

Written to follow the reference decoder's loop structure literally (block loop, sub-block
loop, stop checks before every forward) with none of the engine's machinery: every forward
recomputes the whole sequence from token ids under the block-causal mask. With the sub-block
cache the reference attends to a stale snapshot of the block's keys and values; here the
snapshot is kept as plain tensors and the prefix is still recomputed from scratch.
Slow by design; use it only on tiny models.
"""

from __future__ import annotations

import torch

from ..model.attention import DenseAttention, block_causal_mask, causal_mask
from ..model import Transformer
from .acceptance import DEFAULT_RULE, accept as accept_rows
from .sampling import Sampler


def dense_forward(model: Transformer, ids: list[int], block_size: int | None, record: bool = False):
    """The oracle's forward over all of ``ids``, no cache: causal (``block_size`` None) or block-causal
    mask -> (logits [T, V], every layer's (k, v) when ``record``, else None)."""
    pos = torch.arange(len(ids), device=model.device)
    mask = causal_mask(pos, pos) if block_size is None else block_causal_mask(pos, pos, block_size)
    attn = DenseAttention(mask[None, None], model.attn_scale, record=record)
    logits = model(torch.tensor([ids], device=model.device), pos[None], attn)  # [T, V]
    return logits, attn.kv


def _first_stop_ready(tokens: list[int], stop_ids: set[int], mask_id: int) -> bool:
    """True when the first stop token has no undecoded position before it."""
    for t in tokens:
        if t == mask_id:
            return False
        if t in stop_ids:
            return True
    return False


@torch.inference_mode()
def naive_block_diffusion(model: Transformer, prompt: list[int], *, max_new_tokens: int, block_size: int,
                          small_block_size: int, threshold: float, use_block_cache: bool, mask_id: int,
                          stop_ids: set[int], sampler: Sampler, acceptance: str = DEFAULT_RULE) -> list[int]:
    bs, L = block_size, len(prompt)
    x = list(prompt)
    if L >= bs and L % bs == 0:
        logits, _ = dense_forward(model, x, bs)
        x.append(int(sampler(logits[-1:])[0][0]))
    while not any(t in stop_ids for t in x[L:]) and len(x) - L < max_new_tokens:
        gen_start = len(x)
        block_start = gen_start // bs * bs
        x += [mask_id] * (block_start + bs - gen_start)
        block_kv = None  # the sub-block cache belongs to one block
        while True:
            if _first_stop_ready(x[gen_start:], stop_ids, mask_id):
                break
            if mask_id not in x[block_start:]:
                logits, _ = dense_forward(model, x, bs)  # commit the block; its last output opens the next one
                x.append(int(sampler(logits[-1:])[0][0]))
                break
            for s0 in range(0, bs, small_block_size):
                s1 = s0 + small_block_size
                while True:
                    sub = x[block_start + s0:block_start + s1]
                    if mask_id not in sub or _first_stop_ready(x[gen_start:], stop_ids, mask_id):
                        break
                    if not use_block_cache or block_kv is None or x[block_start + s0] == mask_id:
                        logits, kv = dense_forward(model, x, bs, record=use_block_cache)
                        if use_block_cache:
                            block_kv = [(k[:, :, block_start:].clone(), v[:, :, block_start:].clone()) for k, v in kv]
                        block_logits = logits[block_start:]
                        shifted = torch.cat([block_logits[:1], block_logits[:-1]])[s0:s1]
                    else:
                        shifted = _sub_block_logits(model, x, block_start, s0, s1, bs, block_kv)
                    masked = [j for j, t in enumerate(sub) if t == mask_id]
                    tokens, conf = sampler(shifted[masked])  # only masked positions are drawn
                    accept = accept_rows(conf, threshold, acceptance)
                    for j, tok, ok in zip(masked, tokens.tolist(), accept.tolist()):
                        if ok:
                            x[block_start + s0 + j] = tok
    out = x[L:]
    for i, t in enumerate(out):
        if t in stop_ids:
            out = out[:i + 1]
            break
    return out[:max_new_tokens]


def _sub_block_logits(model, x, block_start, s0, s1, bs, block_kv):
    """Feed only the sub-block; keys = recomputed prefix + the block's cached (stale) KV."""
    if block_start:
        _, prefix = dense_forward(model, x[:block_start], bs, record=True)
    else:
        prefix = [(k[:, :, :0], v[:, :, :0]) for k, v in block_kv]
    keys = [(torch.cat([pk, bk[:, :, :s0], bk[:, :, s1:]], dim=2), torch.cat([pv, bv[:, :, :s0], bv[:, :, s1:]], dim=2))
            for (pk, pv), (bk, bv) in zip(prefix, block_kv)]
    attn = DenseAttention(None, model.attn_scale, prefix=keys, record=True)
    pos = torch.arange(block_start + s0, block_start + s1, device=model.device)
    logits = model(torch.tensor([x[block_start + s0:block_start + s1]], device=model.device), pos[None], attn)
    for (bk, bv), (k, v) in zip(block_kv, attn.kv):  # the reference updates its block cache in place
        bk[:, :, s0:s1], bv[:, :, s0:s1] = k, v
    return torch.cat([logits[:1], logits[:-1]])


@torch.inference_mode()
def naive_autoregressive(model: Transformer, prompt: list[int], *, max_new_tokens: int, stop_ids: set[int],
                         sampler: Sampler) -> list[int]:
    x = list(prompt)
    while len(x) - len(prompt) < max_new_tokens:
        logits, _ = dense_forward(model, x, None)
        x.append(int(sampler(logits[-1:])[0][0]))
        if x[-1] in stop_ids:
            break
    return x[len(prompt):]
