"""The server's size limits, from its flags, and the check every request passes before it is queued.

- ``max_model_len``: prompt plus ``max_tokens`` of one sequence (OpenAI/vLLM semantics: a request
  over it is a 400 naming both numbers; a request that gives no ``max_tokens`` gets the default,
  cut to what fits). At most the model's context (block diffusion: the whole blocks in it).
- ``kv_tokens``: the KV pool, ``max_batch_size x kv_cache_tokens`` positions, allocated once at
  start; no request can make it grow. A sequence reserves its planner's capacity (block
  diffusion decodes the last block whole, so prompt plus output rounded up to a block).
- ``max_body_bytes``: the largest request body (``guards.py``), by default 64 bytes per token of
  ``max_model_len`` and at least 1 MiB: ordinary text is about 4 bytes a token, escaped
  non-Latin text about 12, a list of token ids at most 8, so no request that fits the context
  comes near it.

``precheck`` refuses a prompt that cannot fit before it is tokenized: a token stands for at
most so many characters of the prompt (``token_bound(tokenizer)``), so a prompt of ``c``
characters has at least ``c`` over that many tokens, and the work of tokenizing is bounded by
the context whatever the client sends.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..engine.options import context_cap
from ..engine.params import DecodeParams
from ..engine.scheduler import kv_need
from ..engine.sequence import Sequence
from .errors import APIError

DEFAULT_SLOT_TOKENS = 2048  # kv_cache_tokens when neither it nor max_model_len is given
BODY_BYTES_PER_TOKEN, MIN_BODY_BYTES = 64, 1 << 20
# normalizers that never shorten a text, and those that compose at most 4 code points into one
# (canonical composition: Greek polytonic vowels, Hangul jamo, half-width kana with marks)
_KEEPS_LENGTH = {"Lowercase", "Prepend", "NFD", "NFKD"}
_COMPOSES = {"NFC", "NFKC"}


def default_body_limit(max_model_len: int) -> int:
    return max(MIN_BODY_BYTES, BODY_BYTES_PER_TOKEN * max_model_len)


def _shrink(normalizer: dict | None) -> int | None:
    """How many characters a tokenizer's normalizer may turn into one (None: no bound)."""
    if normalizer is None:
        return 1
    kind = normalizer.get("type")
    if kind == "Sequence":
        factor = 1
        for n in normalizer.get("normalizers", []):
            f = _shrink(n)
            if f is None:
                return None
            factor *= f
        return factor
    if kind in _KEEPS_LENGTH:
        return 1
    if kind in _COMPOSES:
        return 4
    if kind == "Replace":  # SentencePiece's " " -> "▁": one character for one
        pattern, content = normalizer.get("pattern", {}).get("String"), normalizer.get("content", "")
        return 1 if pattern is not None and len(content) >= len(pattern) else None
    return None  # stripping, BERT's control-character removal...: a text may shrink without bound


@dataclass(frozen=True)
class TokenBound:
    """A prompt of ``c`` characters has at least ``c / (longest x shrink)`` tokens (``shrink`` is 1
    for ASCII text, which no normalizer composes)."""

    longest: int                   # characters of the longest vocabulary entry
    shrink: int                    # characters the normalizer may compose into one

    def least_tokens(self, chars: int, ascii_only: bool) -> int:
        return math.ceil(chars / (self.longest * (1 if ascii_only else self.shrink)))


def token_bound(tokenizer) -> TokenBound | None:
    """The bound for a tokenizer, or None where none holds (the pre-check is then off).

    A vocabulary entry has at least as many characters as its text (byte-level entries spell one
    character per byte). Only for fast (Rust) tokenizers, whose normalizer can be read.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        shrink = _shrink(json.loads(backend.to_str()).get("normalizer"))
        longest = max(len(t) for t in tokenizer.get_vocab())
    except (ValueError, TypeError, AttributeError):
        return None
    return None if shrink is None else TokenBound(longest, shrink)


def prompt_size(prompt) -> tuple[int, bool, bool]:
    """``(n, exact, ascii)``: a list of token ids' length (exact), or the characters of a text or
    of chat messages' contents, and whether they are all ASCII."""
    if isinstance(prompt, str):
        return len(prompt), False, prompt.isascii()
    if prompt and all(isinstance(m, dict) for m in prompt):
        texts = [m.get("content") or "" for m in prompt]
        return sum(map(len, texts)), False, all(t.isascii() for t in texts)
    return len(prompt), True, True


@dataclass(frozen=True)
class Limits:
    max_model_len: int
    kv_tokens: int
    context: int                   # the model's max_position_embeddings

    @classmethod
    def from_flags(cls, context: int, max_batch_size: int, kv_cache_tokens: int | None = None,
                   max_model_len: int | None = None) -> Limits:
        """ValueError for flags that contradict each other or the model."""
        if max_model_len is not None and not 0 < max_model_len <= context:
            raise ValueError(f"max_model_len must be in 1..{context} (the model's context), got {max_model_len}")
        if kv_cache_tokens is not None and kv_cache_tokens <= 0:
            raise ValueError(f"kv_cache_tokens must be positive, got {kv_cache_tokens}")
        per_slot = kv_cache_tokens or max_model_len or min(context, DEFAULT_SLOT_TOKENS)
        pool = max_batch_size * per_slot
        if max_model_len is None:
            max_model_len = min(context, pool)
        elif max_model_len > pool:
            raise ValueError(f"max_model_len {max_model_len} does not fit the KV cache ({max_batch_size} x "
                             f"{per_slot} = {pool} positions); raise kv_cache_tokens")
        return cls(max_model_len, pool, context)

    def max_len(self, params: DecodeParams) -> int:
        # max_model_len <= context (from_flags); the schema's cap adds diffusion's whole last block
        return min(self.max_model_len, context_cap(params, self.context))

    def precheck(self, prompts: list, requested: int | None, bound: TokenBound | None, prompt_param: str) -> None:
        """Refuse (400) a prompt that cannot fit ``max_model_len``, before tokenizing it.

        ``bound``: ``token_bound`` of the tokenizer (None: only token-id prompts are checked).
        """
        cap = self.max_model_len
        for prompt in prompts:
            n, exact, ascii_only = prompt_size(prompt)
            if not exact and bound is None:
                continue
            least = n if exact else bound.least_tokens(n, ascii_only)
            at_least = "" if exact else "at least "
            if requested is not None and least + requested > cap:
                raise APIError(400, f"This model's maximum context length is {cap} tokens. However, you requested "
                               f"{at_least}{least + requested} tokens ({at_least}{least} in the prompt"
                               f"{'' if exact else f' of {n} characters'}, {requested} for the completion). "
                               "Please reduce the prompt or max_tokens.", param="max_tokens",
                               code="context_length_exceeded")
            if least >= cap:
                what = f"{n} tokens" if exact else f"{n} characters, so at least {least} tokens"
                raise APIError(400, f"This model's maximum context length is {cap} tokens. However, the prompt has "
                               f"{what}, which leaves no room for a completion. Please reduce the prompt.",
                               param=prompt_param, code="context_length_exceeded")

    def apply(self, seqs: list[Sequence], params: DecodeParams, requested: int | None,
              prompt_param: str) -> list[Sequence]:
        """Check ``seqs`` (from ``LLM.prepare``) against the limits; returns them with their requests
        cut to fit and decoding with ``params`` (the server's prefill chunk).

        ``requested``: the client's ``max_tokens`` (None: it gave none). Raises ``APIError`` (400).
        """
        cap = self.max_len(params)
        fitted = []
        for seq in seqs:
            p = seq.prompt_len
            if requested is not None and p + requested > cap:
                raise APIError(400, f"This model's maximum context length is {cap} tokens. However, you requested "
                               f"{p + requested} tokens ({p} in the prompt, {requested} for the completion). "
                               "Please reduce the prompt or max_tokens.", param="max_tokens",
                               code="context_length_exceeded")
            if p >= cap:
                raise APIError(400, f"This model's maximum context length is {cap} tokens. However, the prompt has "
                               f"{p} tokens, which leaves no room for a completion. Please reduce the prompt.",
                               param=prompt_param, code="context_length_exceeded")
            n = min(seq.max_new_tokens, cap - p)
            seq = seq.with_request(max_new_tokens=n, limit=p + n, params=params)
            need = kv_need(seq)
            if need > self.kv_tokens:
                raise APIError(400, f"This request needs {need} KV-cache positions (prompt and max_tokens rounded up "
                               f"to whole blocks of {params.block_size}); the server's KV cache holds "
                               f"{self.kv_tokens}.", param="max_tokens", code="context_length_exceeded")
            fitted.append(seq)
        return fitted
