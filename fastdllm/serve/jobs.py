"""From a validated request to a job queued on the engine: the server's public jobs interface.

Every route that generates (``/v1/completions``, ``/v1/chat/completions`` in ``app.py``, and the
denoising page's ``/v1/denoise`` in ``denoise.py``) goes through the same steps, here:
``server_state`` (the app's ``ServerState``), ``check_model`` (404 for another model's name),
``start_job`` (limits before and after tokenizing, the decoding options merged, the job queued)
and ``sse_data`` (one server-sent event).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
from dataclasses import dataclass

import anyio
from fastapi import Request

from ..engine.options import merge
from ..engine.scheduler import QueueFull
from .batcher import Batcher, Job, runs_alone
from .errors import APIError
from .limits import Limits, TokenBound
from .metrics import ServerMetrics
from .protocol import GenerationRequest
from .stream import JobStream

FINISH = {"stop": "stop", "length": "length"}  # the engine's finish reasons as OpenAI's
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class ServerState:
    llm: object
    model_name: str
    created: int
    limits: Limits
    batcher: Batcher
    metrics: ServerMetrics
    default_max_tokens: int
    prefill_chunk: int
    # Hugging Face tokenizers may not be mutated from two threads at once: one request is
    # tokenized at a time, in a worker thread, so the event loop never waits for it
    tokenizer_limiter: anyio.CapacityLimiter
    token_bound: TokenBound | None  # refuses prompts that cannot fit before tokenizing them (limits.py)
    max_body_bytes: int


def server_state(request: Request) -> ServerState:
    return request.app.state.server


def check_model(s: ServerState, name: str) -> None:
    if name != s.model_name:
        raise APIError(404, f"the model '{name}' does not exist; this server serves '{s.model_name}'",
                       "not_found_error", "model", "model_not_found")


async def start_job(s: ServerState, req: GenerationRequest, prompts, requested: int | None, default: int, chat: bool,
                 frames: bool = False) -> Job:
    """Tokenize (worker thread), check the limits, queue. Raises APIError/FastDLLMError (400) or 503.

    ``frames``: the job also gets its sequences' block states (the denoising view).
    """
    arrived = time.perf_counter()
    if req.block_size is not None and req.block_size > s.limits.max_model_len:
        raise APIError(400, f"block_size {req.block_size} is larger than the maximum context length "
                       f"{s.limits.max_model_len}", param="block_size")
    s.limits.precheck(prompts, requested, s.token_bound, "messages" if chat else "prompt")  # before tokenizing
    # precedence: the request, then the server's default length, then the schema's defaults
    opts = merge(req.decode_fields(requested), {"max_new_tokens": default})
    prepare = functools.partial(s.llm.prepare, prompts, chat=chat, options=opts)
    seqs, params = await anyio.to_thread.run_sync(prepare, limiter=s.tokenizer_limiter)
    if params.prefill_chunk != s.prefill_chunk:
        params = dataclasses.replace(params, prefill_chunk=s.prefill_chunk)
    seqs = s.limits.apply(seqs, params, requested, "messages" if chat else "prompt")
    job = Job(seqs, JobStream(asyncio.get_running_loop()), runs_alone(vars(opts), len(seqs)), arrived, frames=frames)
    try:
        s.batcher.submit(job)
    except QueueFull as e:
        raise APIError(503, f"the server is overloaded ({e}); retry later", "server_error", code="overloaded") from None
    return job


def sse_data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
