"""The HTTP layer of ``fastdllm serve``: uvicorn's h11 protocol plus what it lacks against slow clients.

uvicorn times out idle keep-alive connections but not a client that opens a connection and
sends its headers slowly, or never (slowloris). ``GuardedH11Protocol`` adds:

- a header timeout: a connection whose next request's headers have not arrived whole
  ``header_timeout`` seconds after it opened, or after its previous response, is answered 408
  (if it sent part of a request) and closed;
- a response that ends before its request's body was read whole (a guard refused it) leaves the
  connection open ``LINGER`` seconds more, while uvicorn reads and drops the rest of that body,
  then closes it: closing at once, with the body still arriving, makes the kernel reset the
  connection, and a client still sending (most clients send the whole body before they read)
  would never see its answer. A body that ends within ``LINGER`` leaves the connection open for
  the client's next request, as HTTP/1.1 wants (the answer did not say it would close).

The body's own timeout, its size limit and the API key are ASGI guards (``guards.py``).
"""

from __future__ import annotations

import json

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .protocol import error_body

DEFAULT_HEADER_TIMEOUT = 10.0
LINGER = 2.0


class GuardedH11Protocol(H11Protocol):
    header_timeout: float = DEFAULT_HEADER_TIMEOUT

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._header_timer = None
        self._linger = None        # set while the rest of a refused body is dropped

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # while lingering, uvicorn drops the refused body's data
        if self._linger is not None and self.conn.their_state is not h11.SEND_BODY:
            self._linger.cancel()  # the refused body has ended: the connection serves the next request
            self._linger = None
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self._linger = self.loop.call_later(LINGER, self.transport.close)
            return
        self._watch_headers()

    def connection_lost(self, exc) -> None:
        self._stop_timer()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        """The timer runs while the connection waits for a request's headers."""
        waiting = self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)
        if not waiting:
            self._stop_timer()
        elif self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _stop_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.our_state is h11.IDLE and self.conn.trailing_data[0]:  # part of a request came: say why
            body = json.dumps(error_body(f"the request headers did not arrive within {self.header_timeout:g} s "
                                         "(--header-timeout)", code="request_timeout")).encode()
            try:
                out = self.conn.send(h11.Response(status_code=408, reason=b"Request Timeout", headers=[
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")]))
                out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
                self.transport.write(out)
            except h11.LocalProtocolError:
                pass
        self.transport.close()


def protocol(header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> type[GuardedH11Protocol]:
    if header_timeout <= 0:
        raise ValueError(f"header_timeout must be positive, got {header_timeout}")
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": header_timeout})


def config(app, host: str = "127.0.0.1", port: int = 8000, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
           **kwargs) -> uvicorn.Config:
    """A uvicorn ``Config`` for ``app`` with the guarded protocol (``kwargs``: uvicorn's own)."""
    return uvicorn.Config(app, host=host, port=port, http=protocol(header_timeout), **kwargs)
