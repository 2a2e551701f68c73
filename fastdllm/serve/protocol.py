"""Request and response bodies of the OpenAI-compatible API (the subset fastdllm implements).

Requests are validated by pydantic in strict mode, as the OpenAI API does: a field of the wrong
type (``"max_tokens": "5"``), an out-of-range number or an unknown field is rejected, and so
are fields fastdllm does not implement (``logprobs``, ``n > 1``, tools...), with a clear
message rather than silently ignored. The block-diffusion knobs (``threshold``,
``block_size``, ``small_block_size``, ``use_block_cache``, ``mode``, ``acceptance``, ``top_k``) and vLLM's
``ignore_eos`` are accepted as extra body fields, which the ``openai`` client sends with
``extra_body={...}``.

The decoding fields keep None for "not given" (``decode_fields``): the defaults are the
decoding-options schema's (``engine/options.py``), merged in ``app.py``, and the ranges pydantic
checks (and ``/openapi.json`` documents) are taken from the schema's ``BOUNDS``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..engine.acceptance import RULES
from ..engine.options import BOUNDS

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
STRICT = ConfigDict(strict=True, allow_inf_nan=False)
OPENAI_MAX_TEMPERATURE = 2.0  # the OpenAI API's cap, stricter than the schema's


def _range(name: str, **stricter) -> dict:
    """pydantic ``Field`` bounds of a ``DecodeOptions`` field (``stricter``: the OpenAI API's own)."""
    return {**BOUNDS[name].pydantic(), **stricter}


class DiffusionOptions(BaseModel):
    """fastdllm's extensions, shared by both endpoints."""

    model_config = STRICT

    threshold: float | None = Field(None, **_range("threshold"))
    block_size: int | None = Field(None, **_range("block_size"))
    small_block_size: int | None = Field(None, **_range("small_block_size"))
    use_block_cache: bool | None = None
    mode: Literal["diffusion", "ar"] | None = None
    acceptance: Literal[RULES] | None = None  # type: ignore[valid-type]  (the engine's rule names)
    top_k: int | None = Field(None, **_range("top_k"))
    ignore_eos: bool = False  # as vLLM: decode max_tokens tokens whatever the model says (benchmarks)


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    include_usage: bool = False


class GenerationRequest(DiffusionOptions):
    """The fields both OpenAI endpoints share."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str
    temperature: float | None = Field(None, **_range("temperature", le=OPENAI_MAX_TEMPERATURE))
    top_p: float | None = Field(None, **_range("top_p"))
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    user: str | None = None
    # accepted for compatibility, must keep their neutral values
    frequency_penalty: float | None = 0.0
    presence_penalty: float | None = 0.0
    logprobs: Any = None
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="after")
    def _unsupported(self):
        if self.n != 1:
            raise ValueError("n > 1 is not supported; send one request per completion")
        if self.logprobs not in (None, False, 0):
            raise ValueError("logprobs are not supported")
        if self.frequency_penalty or self.presence_penalty:
            raise ValueError("frequency_penalty and presence_penalty are not supported")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop takes at most 4 sequences")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def decode_fields(self, max_tokens: int | None) -> dict[str, Any]:
        """The ``DecodeOptions`` fields this request gives (None: not given; ``engine.options.merge``)."""
        given = {k: getattr(self, k) for k in ("temperature", "top_p", "seed", "stop", "threshold", "block_size",
                                               "small_block_size", "use_block_cache", "mode", "acceptance",
                                               "top_k")}
        return {**given, "max_new_tokens": max_tokens, "stop_token_ids": [] if self.ignore_eos else None}


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, **_range("max_new_tokens"))  # None: 16, as OpenAI, cut to the context
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _prompt(self):
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.best_of not in (None, 1):
            raise ValueError("best_of is not supported")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt is empty")
        return self

    def prompts(self) -> list[str | list[int]]:
        """One entry per completion: a text or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            parts = []
            for part in self.content:
                if part.type != "text":
                    raise ValueError(f"only text content parts are supported, got {part.type!r}")
                parts.append(part.text or "")
            return "".join(parts)
        return self.content or ""


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, **_range("max_new_tokens"))
    max_completion_tokens: int | None = Field(None, **_range("max_new_tokens"))
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _chat(self):
        if self.tools:
            raise ValueError("tools are not supported")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise ValueError("response_format other than text is not supported")
        return self

    def chat_messages(self) -> list[dict[str, str]]:
        role = {"developer": "system"}
        return [{"role": role.get(m.role, m.role), "content": m.text()} for m in self.messages]

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# ---- responses ---------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
