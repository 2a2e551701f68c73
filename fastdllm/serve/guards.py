"""ASGI guards in front of the routes: a client that means harm gets a 4xx, not the server's time.

- ``ApiKey``: the API routes (``/v1/...``; ``/health`` and ``/metrics`` too if asked) need
  ``Authorization: Bearer <key>``; anything else is a 401, answered before the body is read.
  The key is compared in constant time and never logged or echoed.
- ``BodyLimit``: a body over ``max_bytes`` is a 413 while it is being read (at once when its
  ``Content-Length`` says so; counted chunk by chunk otherwise, whatever the transfer
  encoding), before it is parsed; a body that has not arrived whole ``timeout`` seconds after
  the request's headers is a 408 (a client sending a byte a second is dropped).
- ``RequestDeadline``: an API request still running ``seconds`` after it arrived is ended: a 408
  if nothing was sent yet, an in-band error event on a stream; its generation is cancelled (the
  routes cancel their job when their task is cancelled).

Every refusal is an OpenAI error body. A refusal that leaves a body unread does not close the
connection itself: the HTTP layer (``http.py``) drops the rest of the body for a moment and then
closes it, so that a client still sending sees its answer rather than a reset.
FastAPI's own ``max_body_size`` is not used: it answers a too-long ``Content-Length`` with a
plain-text 413, and it has no read timeout.
"""

from __future__ import annotations

import hmac
import json
from typing import Callable

import anyio
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from .protocol import error_body

CLOSE = {"Connection": "close"}
# the openai client retries 408s: a request that ran out of time would only run out again
NO_RETRY = {"x-should-retry": "false"}


class RefusedBody(HTTPException):
    """Raised from ``receive`` while a body is read: the error handlers turn it into its error body."""

    def __init__(self, status: int, message: str, code: str, headers: dict | None = None):
        super().__init__(status, message, headers=headers)
        self.code = code


def api_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def refusal(status: int, message: str, code: str, headers: dict | None = None,
            type_: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(error_body(message, type_, None, code), status_code=status, headers=headers)


class ApiKey:
    def __init__(self, app, key: str, protected: Callable[[str], bool] = api_path):
        if not key:
            raise ValueError("the API key must not be empty")
        self.app = app
        self._key = key.encode()
        self._protected = protected

    def authorized(self, scope) -> bool:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        # header values are latin-1 on the wire; compare_digest takes time independent of where they differ
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("latin-1"), self._key)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self._protected(scope["path"]) and not self.authorized(scope):
            headers = {"WWW-Authenticate": "Bearer"}
            response = refusal(401, "missing or incorrect API key: send the header 'Authorization: Bearer <key>' "
                                    "with the key the server was started with", "invalid_api_key", headers)
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    def __init__(self, app, max_bytes: int, timeout: float | None):
        if max_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_bytes}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"body_timeout must be positive, got {timeout}")
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    def _too_large(self) -> str:
        return f"the request body is larger than this server's limit of {self.max_bytes} bytes (--max-body-bytes)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await refusal(413, self._too_large(), "request_too_large")(scope, receive, send)
        deadline = None if self.timeout is None else anyio.current_time() + self.timeout
        received, whole = 0, False

        async def bounded_receive():
            nonlocal received, whole
            if whole:  # the body is in: what follows is a disconnect, whenever it comes
                return await receive()
            try:
                with anyio.fail_after(None if deadline is None else max(0.0, deadline - anyio.current_time())):
                    message = await receive()
            except TimeoutError:
                raise RefusedBody(408, f"the request body did not arrive within {self.timeout:g} s of its headers "
                                       "(--body-timeout)", "request_timeout", CLOSE) from None  # too slow for more
            if message["type"] != "http.request":
                whole = True
                return message
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise RefusedBody(413, self._too_large(), "request_too_large")
            whole = not message.get("more_body", False)
            return message

        await self.app(scope, bounded_receive, send)


class RequestDeadline:
    def __init__(self, app, seconds: float, applies: Callable[[str], bool] = api_path):
        if seconds <= 0:
            raise ValueError(f"request_timeout must be positive, got {seconds}")
        self.app, self.seconds, self._applies = app, seconds, applies

    def _message(self) -> str:
        return f"the request ran past this server's time limit of {self.seconds:g} s (--request-timeout)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self._applies(scope["path"]):
            return await self.app(scope, receive, send)
        started, stream = False, False

        async def watched_send(message):
            nonlocal started, stream
            if message["type"] == "http.response.start":
                started = True
                stream = Headers(raw=message.get("headers", [])).get("content-type", "").startswith(
                    "text/event-stream")
            await send(message)

        with anyio.move_on_after(self.seconds) as limit:
            await self.app(scope, receive, watched_send)
        if not limit.cancelled_caught:
            return
        if not started:
            response = refusal(408, self._message(), "request_timeout", NO_RETRY, "timeout_error")
            return await response(scope, receive, send)
        if stream:  # headers are gone: end the stream with an in-band error, as the routes do
            event = f"data: {json.dumps(error_body(self._message(), 'timeout_error', None, 'request_timeout'))}\n\n"
            with anyio.move_on_after(1.0):  # a client that does not read gets the connection closed instead
                await send({"type": "http.response.body", "body": event.encode(), "more_body": False})
