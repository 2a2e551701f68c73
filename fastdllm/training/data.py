"""Training data: JSONL files into token samples with a loss mask, and the sample order.

Each line is one object:

- ``{"messages": [{"role": ..., "content": ...}, ...]}``: a chat, rendered with the
  tokenizer's chat template; loss on the assistant turns only (``{% generation %}`` markers
  when the template has them, else the tokens each assistant turn adds to the rendering);
- ``{"text": "..."}``: loss on every token (EOS appended unless ``append_eos`` is off);
- ``{"input_ids": [...], "loss_mask": [0, 1, ...]}``: pre-tokenized (no tokenizer needed);
  ``loss_mask`` defaults to all ones.

Samples are truncated to ``seq_len``; with ``packing`` they are concatenated (in file order)
and cut into rows of exactly ``seq_len`` tokens. ``SampleOrder`` maps a global sample index
to a sample: a seeded permutation per epoch, so any process can find any index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import FastDLLMError


class DataError(FastDLLMError, ValueError):
    """The training data file is missing, empty or malformed."""


@dataclass
class Sample:
    ids: torch.Tensor        # [n] long
    loss_mask: torch.Tensor  # [n] bool

    @property
    def length(self) -> int:
        return len(self.ids)


def load_samples(path: str | Path, tokenizer, seq_len: int, vocab_size: int, packing: bool = False,
                 append_eos: bool = True) -> list[Sample]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    raw: list[tuple[list[int], list[bool]]] = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            ids, mask = encode_record(obj, tokenizer, append_eos, f"{path}:{lineno}")
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise DataError(f"{path}:{lineno}: token id {bad[0]} is outside the vocabulary (size {vocab_size})")
            raw.append((ids, mask))
    if not raw:
        raise DataError(f"{path}: no samples (the file is empty)")
    rows = pack(raw, seq_len) if packing else [(i[:seq_len], m[:seq_len]) for i, m in raw]
    samples = [Sample(torch.tensor(i, dtype=torch.long), torch.tensor(m, dtype=torch.bool))
               for i, m in rows if any(m[1:])]
    if not samples:
        raise DataError(f"{path}: no sample has a token to learn (every loss mask is empty after truncation "
                        f"to {seq_len} tokens)")
    return samples


def pack(raw: list[tuple[list[int], list[bool]]], seq_len: int) -> list[tuple[list[int], list[bool]]]:
    ids = [t for i, _ in raw for t in i]
    mask = [b for _, m in raw for b in m]
    return [(ids[a:a + seq_len], mask[a:a + seq_len]) for a in range(0, len(ids), seq_len)]


def encode_record(obj, tokenizer, append_eos: bool, where: str) -> tuple[list[int], list[bool]]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with 'messages', 'text' or 'input_ids'")
    if "input_ids" in obj:
        ids = obj["input_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
            raise DataError(f"{where}: 'input_ids' must be a non-empty list of integers")
        mask = obj.get("loss_mask", [1] * len(ids))
        if not isinstance(mask, list) or len(mask) != len(ids):
            raise DataError(f"{where}: 'loss_mask' must be a list as long as 'input_ids'")
        return list(ids), [bool(b) for b in mask]
    if "messages" not in obj and "text" not in obj:
        raise DataError(f"{where}: expected a 'messages', 'text' or 'input_ids' key")
    if tokenizer is None:
        raise DataError(f"{where}: 'messages' and 'text' need a tokenizer, and this model has none "
                        f"(use 'input_ids' records or pass --tokenizer)")
    if "messages" in obj:
        return encode_chat(obj["messages"], tokenizer, where)
    text = obj["text"]
    if not isinstance(text, str) or not text:
        raise DataError(f"{where}: 'text' must be a non-empty string")
    ids = list(tokenizer(text)["input_ids"])
    eos = tokenizer.eos_token_id
    if append_eos and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids, [True] * len(ids)


def _template_ids(tokenizer, messages, **kw) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kw)
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def encode_chat(messages, tokenizer, where: str) -> tuple[list[int], list[bool]]:
    if (not isinstance(messages, list) or not messages
            or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)):
        raise DataError(f"{where}: 'messages' must be a list of {{'role', 'content'}} objects")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the chat has no assistant turn to learn")
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise DataError(f"{where}: 'messages' need a chat template, and the tokenizer has none")
    try:
        if "{% generation %}" in template or "{%- generation %}" in template:
            out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            return list(out["input_ids"]), [bool(b) for b in out["assistant_masks"]]
        return _chat_by_prefixes(messages, tokenizer)
    except DataError:
        raise
    except Exception as e:  # the template rejects these messages
        raise DataError(f"{where}: cannot apply the chat template: {e}") from None


def _chat_by_prefixes(messages, tokenizer) -> tuple[list[int], list[bool]]:
    """Loss on what each assistant turn adds after the generation prompt of its prefix."""
    ids = _template_ids(tokenizer, messages)
    mask = [False] * len(ids)
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_template_ids(tokenizer, messages[:k], add_generation_prompt=True)) if k else 0
        end = len(_template_ids(tokenizer, messages[:k + 1]))
        for i in range(start, min(end, len(ids))):
            mask[i] = True
    return ids, mask


class SampleOrder:
    """Global sample index -> sample index: a seeded permutation of the data per epoch."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._perm: tuple[int, list[int]] | None = None

    def __getitem__(self, g: int) -> int:
        epoch, pos = divmod(g, self.n)
        if not self.shuffle:
            return pos
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=gen).tolist())
        return self._perm[1][pos]


def micro_batch_indices(step: int, accum: int, rank: int, micro: int, world: int, grad_accum: int) -> list[int]:
    """Global sample indices of one micro-batch: step ``step`` (0-based), accumulation ``accum``, ``rank``.

    A step covers ``micro * world * grad_accum`` consecutive indices; the layout puts the same
    samples in the same micro-batch for (1 process, accum 2k) and (2 processes, accum k).
    """
    per_step = micro * world * grad_accum
    start = step * per_step + (accum * world + rank) * micro
    return list(range(start, start + micro))
