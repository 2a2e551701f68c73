"""A real server for the tests: uvicorn with fastdllm's HTTP layer (``fastdllm.serve.http``) in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn

from fastdllm.serve import http as serve_http


@contextlib.contextmanager
def live(app, header_timeout: float = 10.0):
    """``app`` behind uvicorn with fastdllm's guarded protocol, on a free port: yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(serve_http.config(app, header_timeout=header_timeout, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        sock.close()


