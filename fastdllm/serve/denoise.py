"""``POST /v1/denoise``: one request's decoding, forward by forward, as server-sent events.

The body is a ``/v1/chat/completions`` body (``messages``) or a ``/v1/completions`` body (one
``prompt``), with the same fields, the same strict validation and limits, and the same errors
(OpenAI error bodies, before anything is streamed). The job goes through the server's batcher
like any other request (continuous batching: it shares forwards with the OpenAI routes'
requests) and asks for block frames (``frames.py``); a client that goes away cancels it. The
response always streams (``stream`` may be left out or true). Every event is one
``data: {json}`` line:

- ``{"type": "start", "id", "model", "prompt_tokens", "max_tokens", "mode", "block_size",
  "sub_block_size", "threshold", "acceptance", "use_block_cache"}`` (the decoding parameters in force;
  ``sub_block_size`` is 1 in AR mode);
- ``{"type": "step", "forward", "tokens", "seconds", "text", "block": {"start", "index",
  "prompt", "pieces", "decoded_at", "new", "active"}}`` after a forward: ``forward`` is the
  request's NFE so far, ``tokens`` the committed tokens, ``seconds`` since it entered the batch,
  ``text`` the newly committed text; ``block`` is the current block only: ``pieces`` the text of
  each cell's token (null: masked), ``decoded_at`` the forward that decoded each cell (null:
  masked or prompt), ``new`` the cells decoded by this forward (by the forwards since the last
  event, if the client fell behind), ``prompt`` how many leading cells hold the prompt's end,
  ``active`` the first cell of the sub-block the next forward decodes (null: the block is full);
- ``{"type": "text", "text"}`` for committed text without a forward (rare);
- ``{"type": "done", "finish_reason", "usage", "fastdllm": {"nfe", "tpf"}, "seconds",
  "tokens_per_second"}``, then ``data: [DONE]``. An error after the start comes in-band as an
  OpenAI error body.
"""

from __future__ import annotations

import functools
import json
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError, model_validator

from .batcher import Job
from .errors import APIError
from .frames import Frame
from .jobs import COMPLETION_DEFAULT_MAX_TOKENS, FINISH, check_model, server_state, sse_data, start_job
from .protocol import ChatCompletionRequest, CompletionRequest, error_body, new_id, usage
from .schema import GENERATION_ERRORS, SSE

PIECE_CACHE = 1 << 16  # token id -> text entries kept per server


def _check_streams(req):
    if not req.stream:
        raise ValueError("/v1/denoise always streams: leave stream out or set it to true")
    return req


class DenoiseChatRequest(ChatCompletionRequest):
    stream: bool = True

    @model_validator(mode="after")
    def _denoise(self):
        return _check_streams(self)


class DenoiseCompletionRequest(CompletionRequest):
    stream: bool = True

    @model_validator(mode="after")
    def _denoise(self):
        _check_streams(self)
        if self.echo:
            raise ValueError("echo is not supported by /v1/denoise")
        if len(self.prompts()) != 1:
            raise ValueError("/v1/denoise decodes one prompt; send one request per prompt")
        return self


def install_denoise(app: FastAPI) -> None:
    llm = app.state.llm
    app.state.denoise_piece = piece_decoder(llm.tokenizer)
    app.add_api_route("/v1/denoise", denoise, methods=["POST"], responses={200: {"content": SSE}, **GENERATION_ERRORS})


def piece_decoder(tokenizer):
    """``piece(token_id) -> str``: the text of one token, special tokens included (cached)."""
    if tokenizer is None:
        return str

    @functools.lru_cache(maxsize=PIECE_CACHE)
    def piece(tid: int) -> str:
        return tokenizer.decode([tid], skip_special_tokens=False)

    return piece


async def _body(request: Request) -> DenoiseChatRequest | DenoiseCompletionRequest:
    """The request, validated as the OpenAI routes validate theirs (errors: 400 OpenAI bodies)."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise APIError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    kind = DenoiseChatRequest if "messages" in body else DenoiseCompletionRequest
    try:
        return kind.model_validate(body)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from None


async def denoise(request: Request):
    s = server_state(request)
    req = await _body(request)
    check_model(s, req.model)
    if isinstance(req, DenoiseChatRequest):
        try:
            messages = req.chat_messages()
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        job = await start_job(s, req, [messages], req.token_limit(), s.default_max_tokens, chat=True, frames=True)
    else:
        job = await start_job(s, req, req.prompts(), req.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS,
                               chat=False, frames=True)
    return StreamingResponse(_events(s, job, request.app.state.denoise_piece), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def start_event(rid: str, model: str, job: Job) -> dict:
    seq = job.seqs[0]
    p = seq.params
    return {"type": "start", "id": rid, "model": model, "prompt_tokens": seq.prompt_len,
            "max_tokens": seq.max_new_tokens, "mode": p.mode, "block_size": p.block_size,
            "sub_block_size": p.small_block_size if p.mode == "diffusion" else 1, "threshold": p.threshold,
            "acceptance": p.acceptance, "use_block_cache": p.use_block_cache}


def step_event(f: Frame, piece, block_size: int, text: str = "") -> dict:
    return {"type": "step", "forward": f.forward, "tokens": f.tokens, "seconds": round(f.seconds, 4), "text": text,
            "block": {"start": f.block_start, "index": f.block_start // block_size, "prompt": f.prompt_cells,
                      "pieces": [None if t is None else piece(t) for t in f.ids], "decoded_at": f.decoded_at,
                      "new": f.new, "active": f.active}}


def done_event(job: Job, finish_reason: str | None, tokens: int, nfe: int, seconds: float) -> dict:
    return {"type": "done", "finish_reason": FINISH.get(finish_reason, finish_reason or "stop"),
            "usage": usage(job.seqs[0].prompt_len, tokens),
            "fastdllm": {"nfe": nfe, "tpf": tokens / nfe if nfe else 0.0},
            "seconds": round(seconds, 4), "tokens_per_second": tokens / seconds if seconds > 0 else 0.0}


async def _events(s, job: Job, piece) -> AsyncIterator[str]:
    complete = False
    deltas = job.stream.deltas()
    bs = job.seqs[0].params.block_size
    try:
        yield sse_data(start_event(new_id("dnz"), s.model_name, job))
        tokens, seconds = 0, 0.0
        try:
            async for batch in deltas:
                for _, d in batch:
                    tokens += len(d.token_ids)
                    for k, f in enumerate(d.frames):  # the text goes with the newest frame
                        yield sse_data(step_event(f, piece, bs, d.text if k == len(d.frames) - 1 else ""))
                        seconds = f.seconds
                    if d.text and not d.frames:
                        yield sse_data({"type": "text", "text": d.text})
                    if d.finished:
                        yield sse_data(done_event(job, d.finish_reason, tokens, d.nfe, seconds))
        except Exception as e:  # headers are gone: report in-band, as the OpenAI routes do
            complete = True
            yield sse_data(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"))
            return
        complete = True
        yield "data: [DONE]\n\n"
    finally:  # a client that went away cancels its job
        if not complete:
            s.batcher.cancel(job)
        await deltas.aclose()
