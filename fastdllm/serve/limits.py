"""The server's size limits, from its flags, and the check every request passes before it is queued.

- ``max_model_len``: prompt plus ``max_tokens`` of one sequence (OpenAI/vLLM semantics: a request
  over it is a 400 naming both numbers; a request that gives no ``max_tokens`` gets the default,
  cut to what fits). At most the model's context (block diffusion: the whole blocks in it).
- ``kv_tokens``: the KV pool, ``max_batch_size x kv_cache_tokens`` positions, allocated once at
  start; no request can make it grow. A sequence reserves its planner's capacity (block
  diffusion decodes the last block whole, so prompt plus output rounded up to a block).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.params import DecodeParams
from ..engine.scheduler import kv_need
from ..engine.sequence import Sequence
from .errors import APIError

DEFAULT_SLOT_TOKENS = 2048  # kv_cache_tokens when neither it nor max_model_len is given


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
        if params.mode == "diffusion":  # the last block must fit the context whole
            return min(self.max_model_len, self.context // params.block_size * params.block_size)
        return self.max_model_len

    def apply(self, seqs: list[Sequence], params: DecodeParams, requested: int | None, prompt_param: str) -> None:
        """Check ``seqs`` (from ``LLM.prepare``) against the limits and cut default lengths to fit.

        ``requested``: the client's ``max_tokens`` (None: it gave none). Raises ``APIError`` (400).
        """
        cap = self.max_len(params)
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
            seq.max_new_tokens, seq.limit = n, p + n
            seq.params = params
            need = kv_need(seq)
            if need > self.kv_tokens:
                raise APIError(400, f"This request needs {need} KV-cache positions (prompt and max_tokens rounded up "
                               f"to whole blocks of {params.block_size}); the server's KV cache holds "
                               f"{self.kv_tokens}.", param="max_tokens", code="context_length_exceeded")
