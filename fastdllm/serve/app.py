"""The OpenAI-compatible HTTP server: ``create_app(llm, model_name)`` returns a FastAPI application.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both
with ``stream: true`` as server-sent events, ``stream_options.include_usage`` honoured),
``GET /health`` and ``GET /metrics`` (Prometheus). A request passes the guards first (``guards.py``:
the API key, the body's size and time, the request's time limit), is validated (``protocol.py``),
refused if its prompt cannot fit whatever its tokens (``limits.py``), tokenized in a worker thread
(never on the event loop), checked against the server's limits and only then queued for the
engine (``batcher.py``), all of it in ``jobs.py``; every error is an OpenAI error body (``errors.py``), and
``/openapi.json`` documents them all (``schema.py``). Responses carry the usual ``usage`` plus a
``fastdllm`` object with the forward passes spent (``nfe``) and tokens per forward (``tpf``).

The denoising page (``GET /``, ``page.py``) and its event stream (``POST /v1/denoise``,
``denoise.py``) go through the same validation, limits and batcher.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from .batcher import Batcher, Job
from .errors import APIError, install_error_handlers
from .guards import ApiKey, BodyLimit, RequestDeadline, api_path
from .denoise import install_denoise
from .jobs import COMPLETION_DEFAULT_MAX_TOKENS, FINISH, ServerState, check_model, server_state, sse_data, start_job
from .limits import Limits, default_body_limit, token_bound
from .metrics import RequestCounter, ServerMetrics
from .page import install_page
from .protocol import ChatCompletionRequest, CompletionRequest, error_body, new_id, now, usage
from .schema import (
    API_ERRORS,
    GENERATION_ERRORS,
    SSE,
    ChatCompletion,
    Completion,
    Health,
    ModelCard,
    ModelList,
    install_schema,
)
from .schema import errors as error_responses



def create_app(llm, model_name: str, max_batch_size: int | None = None, default_max_tokens: int = 512,
               kv_cache_tokens: int | None = None, max_model_len: int | None = None, prefill_chunk: int = 512,
               interleave_prefill: bool = True, max_waiting: int | None = None, max_body_bytes: int | None = None,
               body_timeout: float | None = 30.0, request_timeout: float | None = None, api_key: str | None = None,
               auth_health_metrics: bool = False) -> FastAPI:
    """``model_name``: the id clients send as ``model`` (also listed by ``/v1/models``).

    The KV cache holds ``max_batch_size x kv_cache_tokens`` positions (default per slot:
    ``max_model_len`` if given, else the model's context, at most 2048), allocated at start.
    ``max_model_len``: prompt plus ``max_tokens`` of one request (default: the model's context,
    at most the whole cache). ``prefill_chunk``: prompt tokens prefilled per step, interleaved
    with the running sequences' decode steps (``interleave_prefill=False``: prefill new prompts
    before decoding). ``max_waiting``: queued sequences before requests get 503 (None: no bound).

    The guards (``guards.py``): ``max_body_bytes`` (default ``default_body_limit(max_model_len)``)
    and ``body_timeout`` (seconds from the headers to the body's end; None: none) answer 413 and
    408 while the body is read; ``request_timeout`` ends API requests still running after so
    many seconds (None: no limit); ``api_key`` requires ``Authorization: Bearer <key>`` on
    ``/v1/...`` (and on ``/health`` and ``/metrics`` with ``auth_health_metrics``).
    ValueError for inconsistent limits.
    """
    batch = max_batch_size or llm.engine.max_batch_size
    if prefill_chunk <= 0:
        raise ValueError(f"prefill_chunk must be positive, got {prefill_chunk}")
    limits = Limits.from_flags(llm.config.max_position_embeddings, batch, kv_cache_tokens, max_model_len)
    batcher = Batcher(llm.model, batch, limits.kv_tokens, prefill_chunk, interleave_prefill, max_waiting,
                      backend=llm.engine.backend)
    metrics = batcher.metrics = ServerMetrics(batcher.stats)
    body_limit = default_body_limit(limits.max_model_len) if max_body_bytes is None else max_body_bytes
    state = ServerState(llm, model_name, now(), limits, batcher, metrics, default_max_tokens, prefill_chunk,
                        anyio.CapacityLimiter(1), token_bound(llm.tokenizer), body_limit)

    app = FastAPI(title="fastdllm", lifespan=_lifespan)
    app.state.server = state
    app.state.batcher = batcher
    app.state.llm = llm
    install_error_handlers(app)
    # the last added runs first: count every request, then check the key before anything is read
    app.add_middleware(BodyLimit, max_bytes=body_limit, timeout=body_timeout)
    if request_timeout is not None:
        app.add_middleware(RequestDeadline, seconds=request_timeout)
    if api_key is not None:
        protected = (lambda p: api_path(p) or p in ("/health", "/metrics")) if auth_health_metrics else api_path
        app.add_middleware(ApiKey, key=api_key, protected=protected)
    app.add_middleware(RequestCounter, metrics=metrics)
    guarded = error_responses(401) if api_key is not None and auth_health_metrics else {}
    app.add_api_route("/health", health, methods=["GET"], responses={200: {"model": Health}, **guarded})
    app.add_api_route("/metrics", prometheus, methods=["GET"], responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"},
        **guarded})
    app.add_api_route("/v1/models", list_models, methods=["GET"], responses={200: {"model": ModelList}, **API_ERRORS})
    app.add_api_route("/v1/models/{name:path}", get_model, methods=["GET"],
                      responses={200: {"model": ModelCard}, **API_ERRORS})
    app.add_api_route("/v1/completions", completions, methods=["POST"],
                      responses={200: {"model": Completion, "content": SSE}, **GENERATION_ERRORS})
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"],
                      responses={200: {"model": ChatCompletion, "content": SSE}, **GENERATION_ERRORS})
    install_denoise(app)
    install_page(app)
    install_schema(app, model_name, bearer=api_key is not None, guarded_health=auth_health_metrics)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    batcher: Batcher = app.state.batcher
    batcher.start()
    yield
    batcher.stop()


# ---- routes ---------------------------------------------------------------------------------------

async def health(request: Request):
    s = server_state(request)
    return {"status": "ok", "model": s.model_name, **s.batcher.stats()}


async def prometheus(request: Request):
    s = server_state(request)
    return Response(s.metrics.render(), media_type=s.metrics.content_type)


def _model_card(s: ServerState) -> dict:
    return {"id": s.model_name, "object": "model", "created": s.created, "owned_by": "fastdllm",
            "max_model_len": s.limits.max_model_len}


async def list_models(request: Request):
    return {"object": "list", "data": [_model_card(server_state(request))]}


async def get_model(name: str, request: Request):
    s = server_state(request)
    check_model(s, name)
    return _model_card(s)


async def completions(req: CompletionRequest, request: Request):
    s = server_state(request)
    check_model(s, req.model)
    job = await start_job(s, req, req.prompts(), req.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS, chat=False)
    echo = [s.llm.decode(q.prompt) if req.echo else "" for q in job.seqs]
    env = _envelope("cmpl", s.model_name)

    def chunk(i: int, text: str, finish: str | None) -> dict:
        return env("text_completion", choices=[{"index": i, "text": text, "logprobs": None, "finish_reason": finish}])

    if req.stream:
        return _sse(s, job, chunk, None, echo, req.stream_options,
                    lambda u: env("text_completion", choices=[], usage=u))
    final = await _collect(s, job, request)
    return env("text_completion",
               choices=[{"index": i, "text": echo[i] + r.text, "logprobs": None,
                         "finish_reason": FINISH.get(r.finish_reason, "stop")} for i, r in enumerate(final)],
               usage=_usage(job, final), fastdllm=_stats(final))


async def chat_completions(req: ChatCompletionRequest, request: Request):
    s = server_state(request)
    check_model(s, req.model)
    try:
        messages = req.chat_messages()
    except ValueError as e:
        raise APIError(400, str(e), param="messages") from None
    job = await start_job(s, req, [messages], req.token_limit(), s.default_max_tokens, chat=True)
    env = _envelope("chatcmpl", s.model_name)

    def chunk(i: int, text: str, finish: str | None) -> dict:
        delta = {"content": text} if finish is None else {}
        return env("chat.completion.chunk",
                   choices=[{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}])

    if req.stream:
        head = env("chat.completion.chunk", choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                      "logprobs": None, "finish_reason": None}])
        return _sse(s, job, chunk, head, [""], req.stream_options,
                    lambda u: env("chat.completion.chunk", choices=[], usage=u))
    final = await _collect(s, job, request)
    r = final[0]
    return env("chat.completion",
               choices=[{"index": 0, "message": {"role": "assistant", "content": r.text},
                         "logprobs": None, "finish_reason": FINISH.get(r.finish_reason, "stop")}],
               usage=_usage(job, final), fastdllm=_stats(final))


# ---- answers ---------------------------------------------------------------------------------------

@dataclass
class _Result:
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    nfe: int = 0


async def _collect(s: ServerState, job: Job, request: Request) -> list[_Result]:
    """The whole answer; the job is cancelled if the client goes away first."""
    results = [_Result() for _ in job.seqs]
    watcher = asyncio.ensure_future(_disconnected(request))

    def client_gone(task: asyncio.Future) -> None:
        if not task.cancelled():
            task.exception()  # retrieved: a failing receive also means nobody is listening
            s.batcher.cancel(job)

    watcher.add_done_callback(client_gone)
    try:
        async for batch in job.stream.deltas():
            for i, d in batch:
                r = results[i]
                r.text += d.text
                r.tokens += len(d.token_ids)
                r.finish_reason, r.nfe = d.finish_reason, d.nfe
    except BaseException:  # cancelled (the request's time limit): nobody will read the answer
        s.batcher.cancel(job)
        raise
    finally:
        watcher.cancel()
    return results


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _usage(job: Job, final: list[_Result]) -> dict:
    return usage(sum(q.prompt_len for q in job.seqs), sum(r.tokens for r in final))


def _stats(final: list[_Result]) -> dict:
    nfe = sum(r.nfe for r in final)
    gen = sum(r.tokens for r in final)
    return {"nfe": nfe, "tpf": gen / nfe if nfe else 0.0}


def _envelope(prefix: str, model_name: str):
    """The fields every response and chunk of one request share: ``env(object, **rest) -> dict``."""
    rid, created = new_id(prefix), now()
    return lambda object_, **rest: {"id": rid, "object": object_, "created": created, "model": model_name, **rest}


def _sse(s: ServerState, job: Job, chunk, head: dict | None, prefixes: list[str], stream_options,
         usage_chunk) -> StreamingResponse:
    include_usage = bool(stream_options and stream_options.include_usage)

    async def body() -> AsyncIterator[str]:
        complete = False
        deltas = job.stream.deltas()
        try:
            if head is not None:
                yield sse_data(head)
            for i, prefix in enumerate(prefixes):
                if prefix:
                    yield sse_data(chunk(i, prefix, None))
            generated = 0
            try:
                async for batch in deltas:
                    for i, d in batch:
                        generated += len(d.token_ids)
                        if d.text:
                            yield sse_data(chunk(i, d.text, None))
                        if d.finished:
                            yield sse_data(chunk(i, "", FINISH.get(d.finish_reason, "stop")))
            except Exception as e:  # headers are gone: report in-band, as OpenAI does
                complete = True
                yield sse_data(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"))
                return
            complete = True
            if include_usage:
                yield sse_data(usage_chunk(usage(sum(q.prompt_len for q in job.seqs), generated)))
            yield "data: [DONE]\n\n"
        finally:  # a client that went away (the response is closed mid-stream) cancels its job
            if not complete:
                s.batcher.cancel(job)
            await deltas.aclose()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


