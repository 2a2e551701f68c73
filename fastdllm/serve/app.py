"""The OpenAI-compatible HTTP server: ``create_app(llm)`` returns a FastAPI application.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both
with ``stream: true`` as server-sent events, ``stream_options.include_usage`` honoured) and
``GET /health``. Every error is an OpenAI error body (``{"error": {"message", "type", "param",
"code"}}``) with a 4xx status for bad requests and 500 for bugs; a request that fails
validation never reaches the engine. Responses carry the usual ``usage`` plus a ``fastdllm``
object with the forward passes spent (``nfe``) and tokens per forward (``tpf``).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import FastDLLMError
from .batcher import Batcher, Job, Progress, runs_alone
from .protocol import (ChatCompletionRequest, CompletionRequest, _Request, error_body, new_id, now, usage)

FINISH = {"stop": "stop", "length": "length"}


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def create_app(llm, model_name: str, max_batch_size: int | None = None, default_max_tokens: int = 512,
               kv_cache_tokens: int | None = None) -> FastAPI:
    """``model_name``: the id clients send as ``model`` (also listed by ``/v1/models``).

    ``kv_cache_tokens``: KV-cache positions reserved per slot; requests whose prompt and output
    fit join a running batch (default: the model's context, at most 2048).
    """
    if kv_cache_tokens is None:
        kv_cache_tokens = min(llm.config.max_position_embeddings, 2048)
    batcher = Batcher(llm, max_batch_size, kv_cache_tokens)
    created = now()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="fastdllm", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.llm = llm

    # ---- errors ---------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status)

    @app.exception_handler(FastDLLMError)
    async def _user_error(request: Request, e: FastDLLMError):
        return JSONResponse(error_body(str(e)), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        errors = e.errors()
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            msg = "the request body is not valid JSON"
        where = ".".join(loc)
        return JSONResponse(error_body(f"{where}: {msg}" if where else msg, param=where or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        type_ = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), type_), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), status_code=500)

    # ---- routes ---------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "waiting_requests": batcher.waiting,
                "batches": batcher.batches, "largest_batch": batcher.largest_batch,
                "joined_running_batch": batcher.joined}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "fastdllm"}]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        _check_model(name)
        return {"id": model_name, "object": "model", "created": created, "owned_by": "fastdllm"}

    def _check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{model_name}'",
                           "not_found_error", "model", "model_not_found")

    def _options(req: _Request, max_tokens: int | None) -> dict:
        opts = {"max_new_tokens": default_max_tokens if max_tokens is None else max_tokens,
                "temperature": req.temperature or 0.0, "top_p": req.top_p if req.top_p is not None else 1.0,
                "seed": req.seed, "stop": req.stop}
        for k in ("threshold", "block_size", "small_block_size", "use_block_cache", "mode", "top_k"):
            v = getattr(req, k)
            if v is not None:
                opts[k] = v
        return opts

    def _submit(prompts, opts: dict, chat: bool) -> Job:
        seqs, params = llm.prepare(prompts, chat=chat, **opts)  # FastDLLMError -> 400
        job = Job(seqs, params, runs_alone(opts, len(seqs)), asyncio.get_running_loop())
        batcher.submit(job)
        return job

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        _check_model(req.model)
        prompts = req.prompts()
        job = _submit(prompts, _options(req, req.max_tokens), chat=False)
        echo = [llm.decode(s.prompt) if req.echo else "" for s in job.seqs]
        env = _envelope("cmpl", model_name)

        def chunk(i: int, text: str, finish: str | None) -> dict:
            return env("text_completion",
                       choices=[{"index": i, "text": text, "logprobs": None, "finish_reason": finish}])

        if req.stream:
            return _sse(job, chunk, None, echo, req.stream_options,
                        lambda u: env("text_completion", choices=[], usage=u))
        final = await _collect(job)
        return env("text_completion",
                   choices=[{"index": i, "text": echo[i] + p.text, "logprobs": None,
                             "finish_reason": FINISH.get(p.finish_reason, "stop")} for i, p in enumerate(final)],
                   usage=_usage(final), fastdllm=_stats(final))

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest):
        _check_model(req.model)
        try:
            messages = req.chat_messages()
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        job = _submit([messages], _options(req, req.token_limit()), chat=True)
        env = _envelope("chatcmpl", model_name)

        def chunk(i: int, text: str, finish: str | None) -> dict:
            delta = {"content": text} if finish is None else {}
            return env("chat.completion.chunk",
                       choices=[{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}])

        if req.stream:
            head = env("chat.completion.chunk", choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                          "logprobs": None, "finish_reason": None}])
            return _sse(job, chunk, head, [""], req.stream_options,
                        lambda u: env("chat.completion.chunk", choices=[], usage=u))
        final = await _collect(job)
        p = final[0]
        return env("chat.completion",
                   choices=[{"index": 0, "message": {"role": "assistant", "content": p.text},
                             "logprobs": None, "finish_reason": FINISH.get(p.finish_reason, "stop")}],
                   usage=_usage(final), fastdllm=_stats(final))

    return app


# ---- helpers ------------------------------------------------------------------------------------

async def _events(job: Job) -> AsyncIterator[Progress]:
    """The job's progress until the worker's final ``None``; cancels the job if abandoned."""
    done = False
    try:
        while True:
            item = await job.queue.get()
            if item is None:
                done = True
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        if not done:
            job.cancelled.set()


async def _collect(job: Job) -> list[Progress]:
    last: dict[int, Progress] = {}
    async for p in _events(job):
        last[p.index] = p
    missing = [i for i in range(len(job.seqs)) if i not in last]
    if missing:
        raise RuntimeError(f"the engine returned no result for sequence(s) {missing}")
    return [last[i] for i in range(len(job.seqs))]


def _usage(final: list[Progress]) -> dict:
    return usage(sum(p.prompt_tokens for p in final), sum(len(p.token_ids) for p in final))


def _stats(final: list[Progress]) -> dict:
    nfe = sum(p.nfe for p in final)
    gen = sum(len(p.token_ids) for p in final)
    return {"nfe": nfe, "tpf": gen / nfe if nfe else 0.0}


def _envelope(prefix: str, model_name: str):
    """The fields every response and chunk of one request share: ``env(object, **rest) -> dict``."""
    rid, created = new_id(prefix), now()
    return lambda object_, **rest: {"id": rid, "object": object_, "created": created, "model": model_name, **rest}


def _sse(job: Job, chunk, head: dict | None, prefixes: list[str], stream_options, usage_chunk) -> StreamingResponse:
    include_usage = bool(stream_options and stream_options.include_usage)

    async def body() -> AsyncIterator[str]:
        if head is not None:
            yield _data(head)
        sent = [0] * len(job.seqs)
        for i, prefix in enumerate(prefixes):
            if prefix:
                yield _data(chunk(i, prefix, None))
        last: dict[int, Progress] = {}
        events = _events(job)
        try:
            async for p in events:
                last[p.index] = p
                delta = p.text[sent[p.index]:]
                if delta:
                    sent[p.index] = len(p.text)
                    yield _data(chunk(p.index, delta, None))
                if p.finished:
                    yield _data(chunk(p.index, "", FINISH.get(p.finish_reason, "stop")))
        except Exception as e:  # headers are gone: report in-band, as OpenAI does
            yield _data(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"))
            return
        finally:  # a client that went away (the response is closed mid-stream) cancels its job
            await events.aclose()
        if include_usage:
            final = [last[i] for i in sorted(last)]
            yield _data(usage_chunk(_usage(final)))
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
