"""Give the model a mask token: find it, or add ``|<MASK>|`` and grow the vocabulary.

Order of preference: an explicit id, the checkpoint's ``mask_token_id``, the tokenizer's
``|<MASK>|``. Otherwise the token is added to the tokenizer (as a special token) and its id
becomes the new last row; rows the vocabulary must grow by start as the mean of the existing
rows (embedding and, if untied, ``lm_head``), so the new token begins as an "average" input.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..model.config import MASK_TOKEN
from ..loading.rows import init_rows
from .config import TrainConfigError


@dataclass
class MaskToken:
    id: int
    base_vocab_size: int     # vocabulary before any growth
    vocab_size: int          # vocabulary after
    added: bool              # the token is new (its rows were initialised here)

    @property
    def resized(self) -> bool:
        return self.vocab_size != self.base_vocab_size


def find_or_add_mask_token(model: nn.Module, tokenizer, explicit: int | None = None) -> MaskToken:
    cfg = model.cfg
    V = cfg.vocab_size
    if explicit is not None:
        if explicit > V:
            raise TrainConfigError(f"mask_token_id {explicit} is beyond the vocabulary (size {V}); "
                                   f"use an id < {V}, or {V} to append a new row")
        if explicit < V:
            return MaskToken(explicit, V, V, False)
        mask_id, added = explicit, True
    elif cfg.mask_token_id is not None and cfg.mask_token_id < V:
        return MaskToken(cfg.mask_token_id, V, V, False)
    elif tokenizer is not None and _tokenizer_has(tokenizer, MASK_TOKEN) and _tid(tokenizer) < V:
        return MaskToken(_tid(tokenizer), V, V, False)
    else:
        mask_id, added = (_add_to_tokenizer(tokenizer) if tokenizer is not None else V), True
    new_v = max(V, mask_id + 1)
    init_rows(model, V, new_v, mask_id)
    return MaskToken(mask_id, V, new_v, added)


def _tokenizer_has(tokenizer, token: str) -> bool:
    tid = tokenizer.convert_tokens_to_ids(token)
    return isinstance(tid, int) and tid != tokenizer.unk_token_id


def _tid(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(MASK_TOKEN)


def _add_to_tokenizer(tokenizer) -> int:
    if not _tokenizer_has(tokenizer, MASK_TOKEN):
        tokenizer.add_tokens([MASK_TOKEN], special_tokens=True)
    return _tid(tokenizer)
