"""The server against hostile clients: bodies over the limit refused with 413 while they are read
(declared or chunked), prompts that cannot fit refused before tokenizing, slow senders dropped,
a small request answered while a huge one is being refused, API keys (401/200, never logged),
the per-request time limit and the cap on waiting requests. Real uvicorn servers on 127.0.0.1
(the HTTP layer of ``fastdllm serve``: ``fastdllm.serve.http``), serving the shipped default model."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastdllm
from fastdllm.models import DEFAULT_MODEL
from fastdllm.serve import create_app
from fastdllm.serve.limits import TokenBound, _shrink, default_body_limit, token_bound
from tests.server_helpers import live

NAME = "wp"
SMALL = [{"role": "user", "content": "Tom has 3 apples and buys 5 more. How many apples does he have?"}]


@pytest.fixture(scope="module")
def llm():
    return fastdllm.load(DEFAULT_MODEL, max_batch_size=4)


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def raw_response(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """What the server sends until it closes the connection, which it must do within ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        raise AssertionError(f"the server kept the connection open {timeout} s; it sent {data[:200]!r}") from None
    return data


def chat_head(port_url: str, length: int | None, key: str | None = None) -> bytes:
    lines = ["POST /v1/chat/completions HTTP/1.1", f"Host: {port_url}", "Content-Type: application/json"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)))


# ---- bodies over the limit --------------------------------------------------------------------------

LIMIT = 64 * 1024


def test_oversized_bodies_get_413_while_being_read(llm):
    app = create_app(llm, NAME, max_body_bytes=LIMIT)
    big = json.dumps({"model": NAME, "messages": [{"role": "user", "content": "x" * (5 * LIMIT)}]}).encode()
    with live(app) as url:
        # declared: refused from its Content-Length, not one byte of the body sent
        s = connect(url)
        s.sendall(chat_head(url, 50_000_000))
        head, _, body = raw_response(s).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413")  # and the connection closed (raw_response returned)
        assert json.loads(body)["error"]["code"] == "request_too_large"

        # chunked: counted as it arrives, refused once over the limit, long before the sender is done
        s = connect(url)
        s.sendall(chat_head(url, None))
        sent, answer = 0, b""
        s.settimeout(0.05)
        while sent < 100 * LIMIT and not answer:
            chunk = b"y" * 8192
            with contextlib.suppress(socket.timeout):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                answer = s.recv(65536)
        answer += raw_response(s, 5)
        assert answer.startswith(b"HTTP/1.1 413") and sent < 10 * LIMIT, (answer[:100], sent)

        # through an ordinary client, both ways: an OpenAI error body, nothing queued
        for content in (big, iter([big[i:i + 4096] for i in range(0, len(big), 4096)])):
            r = httpx.post(url + "/v1/chat/completions", content=content, timeout=30,
                           headers={"Content-Type": "application/json"})
            e = error_of(r)
            assert r.status_code == 413 and e["code"] == "request_too_large" and str(LIMIT) in e["message"]
        # a body under the limit goes through
        r = httpx.post(url + "/v1/chat/completions", json={"model": NAME, "messages": SMALL, "max_tokens": 8},
                       timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
    assert app.state.batcher.stats()["open_jobs"] == 0


def test_a_client_still_sending_gets_its_413_not_a_reset(llm):
    """The server reads and drops the rest of a refused body for a moment before it closes: closing
    at once, with megabytes still arriving, resets the connection under the client's feet."""
    import asyncio

    app = create_app(llm, NAME, max_body_bytes=LIMIT)
    body = json.dumps({"model": NAME, "messages": [{"role": "user", "content": "x" * 20_000_000}]}).encode()

    async def post(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*[client.post("/v1/chat/completions", content=body, headers={
                "Content-Type": "application/json"}) for _ in range(3)])

    with live(app) as url:
        for r in asyncio.run(post(url)):
            assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
        # a client that sent its whole body may send its next request on the same connection
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(2):
                r = client.post("/v1/chat/completions", content=body[:5 * LIMIT] + b'"}]}',
                                headers={"Content-Type": "application/json"})
                assert r.status_code == 413
                r = client.post("/v1/chat/completions", json={"model": NAME, "messages": SMALL, "max_tokens": 4})
                assert r.status_code == 200


def test_the_default_body_limit_follows_the_context():
    assert default_body_limit(512) == 1 << 20  # at least 1 MiB
    assert default_body_limit(131072) == 64 * 131072


# ---- prompts that cannot fit, refused before tokenizing --------------------------------------------

def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(llm, monkeypatch):
    app = create_app(llm, NAME)
    bound = app.state.server.token_bound
    cap = app.state.server.limits.max_model_len
    assert bound is not None
    calls = []
    real = llm.prepare
    monkeypatch.setattr(llm, "prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    too_long = "ab " * (bound.longest * cap // 3 + 1)  # ASCII: at least len / longest tokens
    with TestClient(app) as http:
        for body in ({"model": NAME, "messages": [{"role": "user", "content": too_long}]},
                     {"model": NAME, "prompt": too_long}, {"model": NAME, "prompt": [5] * cap},
                     {"model": NAME, "messages": [{"role": "user", "content": "é" * (bound.longest * 4 * cap)}]}):
            r = http.post("/v1/chat/completions" if "messages" in body else "/v1/completions", json=body)
            e = error_of(r)
            assert r.status_code == 400 and e["code"] == "context_length_exceeded", e
        assert "characters, so at least" in e["message"]
        # fits by characters, but not with max_tokens: refused too, naming max_tokens
        r = http.post("/v1/completions", json={"model": NAME, "prompt": "ab " * 10, "max_tokens": cap})
        assert r.status_code == 400 and error_of(r)["param"] == "max_tokens"
        assert calls == []  # none of them was tokenized
        r = http.post("/v1/chat/completions", json={"model": NAME, "messages": SMALL, "max_tokens": 4})
        assert r.status_code == 200 and calls == [1]


def test_normalizers_and_the_token_bound():
    assert _shrink(None) == 1
    assert _shrink({"type": "NFC"}) == 4
    assert _shrink({"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]}) == 4
    assert _shrink({"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}) == 1
    for shrinking in ({"type": "BertNormalizer"}, {"type": "Strip"}, {"type": "StripAccents"},
                      {"type": "Replace", "pattern": {"String": "ab"}, "content": ""},
                      {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Strip"}]}):
        assert _shrink(shrinking) is None, shrinking
    assert token_bound(object()) is None  # no fast tokenizer: no bound, the check is off
    assert TokenBound(10, 4).least_tokens(100, True) == 10 and TokenBound(10, 4).least_tokens(100, False) == 3


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=400) | st.text(alphabet="각\u0301\u0308\u0342\u0345αιe ", min_size=1,
                                                         max_size=400))
def test_the_token_bound_holds_for_the_default_tokenizer(llm, text):
    """Random text, and text made to compose under NFC (jamo, Greek with stacked accents)."""
    bound = token_bound(llm.tokenizer)
    least = bound.least_tokens(len(text), text.isascii())
    assert len(llm.tokenizer.encode(text, add_special_tokens=False)) >= least
    if text.strip():
        assert len(llm.encode([{"role": "user", "content": text}])) >= least


# ---- slow and stuck clients ---------------------------------------------------------------------------

def test_slow_senders_are_dropped(llm):
    app = create_app(llm, NAME, body_timeout=1.5)
    with live(app, header_timeout=1.0) as url:
        # the headers, then a byte a second: 408 once the body is 1.5 s late, and the connection closed
        s = connect(url)
        s.sendall(chat_head(url, 100))
        t0, answer = time.monotonic(), b""
        s.settimeout(1.0)
        while not answer and time.monotonic() - t0 < 20:
            with contextlib.suppress(socket.timeout):
                s.sendall(b"{")
                answer = s.recv(65536)
        head, _, body = (answer + raw_response(s, 5)).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), head
        assert json.loads(body)["error"]["code"] == "request_timeout"
        # headers a byte at a time: 408 and closed after the header timeout
        s = connect(url)
        t0, answer = time.monotonic(), b""
        for byte in b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n":
            with contextlib.suppress(OSError):
                s.sendall(bytes([byte]))
            s.settimeout(0.3)
            with contextlib.suppress(socket.timeout):
                answer = s.recv(65536)
            if answer or time.monotonic() - t0 > 20:
                break
        assert answer.startswith(b"HTTP/1.1 408"), answer
        # a connection that never sends anything is closed too
        s = connect(url)
        assert raw_response(s, 20) == b""
        # and the server still answers
        r = httpx.post(url + "/v1/chat/completions", json={"model": NAME, "messages": SMALL, "max_tokens": 8},
                       timeout=60)
        assert r.status_code == 200


def test_a_small_request_is_answered_while_a_huge_body_is_being_refused(llm):
    app = create_app(llm, NAME, max_body_bytes=1 << 20)
    with live(app) as url:
        big_done = threading.Event()
        big = {}

        def slow_huge_body():  # 64 KiB every 0.1 s: about 1.6 s before it passes the limit
            yield b'{"model": "wp", "messages": [{"role": "user", "content": "'
            for _ in range(400):
                time.sleep(0.1)
                yield b"z" * 65536

        def send_big():
            try:
                r = httpx.post(url + "/v1/chat/completions", content=slow_huge_body(), timeout=60,
                               headers={"Content-Type": "application/json"})
                big["status"] = r.status_code
            except httpx.HTTPError as e:  # the server may close before the client reads its answer
                big["status"] = type(e).__name__
            big["at"] = time.monotonic()
            big_done.set()

        thread = threading.Thread(target=send_big)
        thread.start()
        time.sleep(0.3)
        r = httpx.post(url + "/v1/chat/completions", json={"model": NAME, "messages": SMALL, "max_tokens": 16},
                       timeout=60)
        small_at = time.monotonic()
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
        thread.join(60)
        assert big_done.is_set() and big["status"] == 413, big
        assert small_at < big["at"]  # answered while the huge one was still arriving


# ---- API keys -------------------------------------------------------------------------------------------

KEY = "sk-test-0123456789abcdef"


def test_the_api_key_is_required_on_the_api_routes(llm):
    with TestClient(create_app(llm, NAME, api_key=KEY)) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                        {"Authorization": f"Bearer {KEY}x"}, {"Authorization": KEY}):
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/denoise"),
                                 ("GET", "/v1/denoise/config")):
                r = http.request(method, path, headers=headers, json={"model": NAME, "messages": SMALL})
                e = error_of(r)
                assert r.status_code == 401 and e["code"] == "invalid_api_key", (headers, path)
                assert r.headers["www-authenticate"] == "Bearer" and KEY not in r.text
        for path in ("/health", "/metrics", "/"):  # open unless asked
            assert http.get(path).status_code == 200
        client = openai.OpenAI(base_url=str(http.base_url) + "/v1", api_key=KEY, http_client=http, max_retries=0)
        assert [m.id for m in client.models.list().data] == [NAME]
        assert client.chat.completions.create(model=NAME, messages=SMALL, max_tokens=4).usage.completion_tokens > 0
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=str(http.base_url) + "/v1", api_key="nope", http_client=http,
                          max_retries=0).models.list()
    with TestClient(create_app(llm, NAME, api_key=KEY, auth_health_metrics=True)) as http:
        for path in ("/health", "/metrics"):
            assert http.get(path).status_code == 401
            assert http.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert http.get("/").status_code == 200  # the page holds no data: it asks for the key itself


def test_the_key_never_reaches_the_logs(tmp_path):
    """``fastdllm serve`` with the key in its environment, at debug level: the right key and a wrong
    one that contains it are sent; neither appears in anything the server prints."""
    port = _free_port()
    env = {**os.environ, "FASTDLLM_API_KEY": KEY}
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fastdllm", "serve", "--port", str(port), "--log-level",
                                 "debug", "--served-model-name", NAME], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        good = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(url + "/v1/models", headers=good).status_code == 200
        r = httpx.post(url + "/v1/chat/completions", headers=good, json={"model": NAME, "messages": SMALL,
                                                                         "max_tokens": 4}, timeout=60)
        assert r.status_code == 200
        for bad in (f"Bearer {KEY}-wrong", f"Basic {KEY}"):
            assert httpx.get(url + "/v1/models", headers={"Authorization": bad}).status_code == 401
        assert httpx.get(url + "/v1/models").status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    text = log.read_text()
    assert "API key required" in text and "GET /v1/models" in text  # it did log, at debug level
    assert KEY not in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the per-request time limit and the cap on waiting requests -----------------------------------------

def slow_engine(app, seconds: float = 0.05):
    """Every engine step takes at least ``seconds`` (a slow model, without a slow model)."""
    engine = app.state.batcher.engine
    step = engine.step

    def slow_step(scheduler):
        time.sleep(seconds)
        return step(scheduler)

    engine.step = slow_step


def test_requests_past_the_time_limit_are_ended_and_cancelled(llm):
    app = create_app(llm, NAME, request_timeout=1.0)
    slow_engine(app)
    long = {"model": NAME, "messages": SMALL, "max_tokens": 400, "ignore_eos": True}
    with live(app) as url:
        t0 = time.monotonic()
        r = httpx.post(url + "/v1/chat/completions", json=long, timeout=60)
        e = error_of(r)
        assert r.status_code == 408 and e["code"] == "request_timeout" and r.headers["x-should-retry"] == "false"
        assert time.monotonic() - t0 < 30  # not decoded to the end (400 steps of 0.05 s and more)
        with httpx.stream("POST", url + "/v1/chat/completions", json={**long, "stream": True}, timeout=60) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert r.status_code == 200 and len(events) >= 2
        assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "request_timeout"
        deadline = time.monotonic() + 30
        while app.state.batcher.stats()["open_jobs"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = app.state.batcher.stats()
        assert stats["open_jobs"] == stats["running"] == stats["waiting"] == 0  # both were cancelled
        r = httpx.post(url + "/v1/chat/completions", json={"model": NAME, "messages": SMALL, "max_tokens": 4},
                       timeout=60)
        assert r.status_code == 200  # short requests still fit in the limit


def test_requests_over_the_waiting_cap_get_503(llm):
    app = create_app(llm, NAME, max_batch_size=1, max_waiting=1)
    slow_engine(app, 0.02)
    body = {"model": NAME, "messages": SMALL, "max_tokens": 32, "ignore_eos": True}
    with live(app) as url:
        results = []

        def one():
            r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
            results.append((r.status_code, r.json()))

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    codes = sorted(status for status, _ in results)
    assert len(codes) == 6 and 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
    for status, body in results:
        if status == 503:
            assert body["error"]["code"] == "overloaded"
