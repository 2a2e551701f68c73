"""The server under load, as a user would try it: a real uvicorn server on 127.0.0.1 (in a thread
of this process), 20 concurrent streaming clients of which a quarter hang up mid-stream, a few
non-streaming and batched requests, and malformed requests fired at the same time. Every
finished answer must equal solo generation, every malformed request must get a 4xx with an
OpenAI error body, a fixed request must get the same answer before and after, and once the
server is idle again none of its structures may hold anything."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import fastdllm
from fastdllm.serve import create_app
from tests.helpers import make_tiny_chat_checkpoint
from tests.server_helpers import live

NAME = "tiny-bd"
STREAMS, HANG_EVERY = 20, 4
FIXED = [{"role": "user", "content": "Tell me about the sea."}]
MALFORMED = [
    {"model": NAME, "messages": FIXED, "max_tokens": "many"},
    {"model": NAME, "messages": FIXED, "max_tokens": 10**9},
    {"model": NAME, "messages": FIXED, "seed": 2**80},
    {"model": NAME, "messages": FIXED, "block_size": 0},
    {"model": NAME, "messages": [], "max_tokens": 4},
    {"model": NAME, "messages": FIXED, "surprise": True},
    {"model": "other", "messages": FIXED},
    {"messages": FIXED},
]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return fastdllm.load(str(make_tiny_chat_checkpoint(tmp_path_factory.mktemp("load") / "m")), max_batch_size=6)


@pytest.fixture(scope="module")
def server(llm):
    app = create_app(llm, NAME, max_batch_size=6, kv_cache_tokens=256, default_max_tokens=24)
    with live(app) as url:  # the protocol `fastdllm serve` runs
        yield app, url


def messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Story number {i}: a ship, a storm and a lighthouse."}]


async def stream_one(client, i: int) -> dict:
    hang = i % HANG_EVERY == 0
    max_tokens = 200 if hang else 10 + i % 14  # hangers would run long: they must be cancelled
    stream = await client.chat.completions.create(model=NAME, messages=messages(i), max_tokens=max_tokens,
                                                  stream=True, stream_options={"include_usage": True})
    text, pieces, usage = "", 0, None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            pieces += 1
            if hang and pieces >= 2:
                await stream.close()  # the client hangs up mid-stream
                return {"i": i, "hung": True}
        if chunk.usage is not None:
            usage = chunk.usage
    return {"i": i, "hung": False, "text": text, "max_tokens": max_tokens, "usage": usage}


async def malformed(http: httpx.AsyncClient, body: dict) -> tuple[int, dict]:
    r = await http.post("/v1/chat/completions", json=body)
    return r.status_code, r.json()


async def wait_idle(app, timeout: float = 60.0) -> dict:
    """The batcher's structure sizes once nothing is left (cancellations land at the next step)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = app.state.batcher.stats()
        if (stats["open_jobs"] == stats["waiting"] == stats["running"] == stats["ending"] == 0
                or time.monotonic() > deadline):
            return stats
        await asyncio.sleep(0.05)


def test_sustained_load_with_hang_ups_and_bad_requests(server, llm):
    app, base = server
    sync = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
    before = sync.chat.completions.create(model=NAME, messages=FIXED, max_tokens=20).choices[0].message.content

    async def main():
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            jobs = [stream_one(client, i) for i in range(STREAMS)]
            jobs += [malformed(http, body) for body in MALFORMED]
            jobs.append(client.completions.create(model=NAME, prompt=["Hello there", "The weather"], max_tokens=10))
            jobs.append(client.chat.completions.create(model=NAME, messages=messages(99), max_tokens=15))
            results = await asyncio.gather(*jobs)
            stats = await wait_idle(app)
            metrics = (await http.get("/metrics")).text
        await client.close()
        return results, stats, metrics

    results, stats, metrics = asyncio.run(main())
    streams, bad = results[:STREAMS], results[STREAMS:STREAMS + len(MALFORMED)]
    batched, single = results[-2:]

    for status, body in bad:
        assert 400 <= status < 500 and set(body["error"]) == {"message", "type", "param", "code"}, body
    for r in streams:
        if r["hung"]:
            continue
        ref = llm.generate(messages(r["i"]), max_new_tokens=r["max_tokens"])[0]
        assert r["text"] == ref.text and r["usage"].completion_tokens == len(ref.token_ids)
    assert sum(r["hung"] for r in streams) == STREAMS // HANG_EVERY
    assert [c.text for c in batched.choices] == [
        x.text for x in llm.generate(["Hello there", "The weather"], chat=False, max_new_tokens=10)]
    assert single.choices[0].message.content == llm.generate(messages(99), max_new_tokens=15)[0].text

    # idle again: nothing held for any of the requests served
    assert stats == {**stats, "open_jobs": 0, "waiting": 0, "running": 0, "ending": 0, "kv_spans": 0, "kv_used": 0}
    finished = {s.labels["reason"]: s.value for f in text_string_to_metric_families(metrics) for s in f.samples
                if s.name == "fastdllm_sequences_finished_total"}
    assert finished.get("cancelled", 0) >= 1  # hung-up streams were cancelled, not decoded to the end
    assert sum(finished.values()) == 1 + STREAMS + 2 + 1  # the fixed request, the streams, 2 + 1 more

    after = sync.chat.completions.create(model=NAME, messages=FIXED, max_tokens=20).choices[0].message.content
    assert after == before == llm.generate(FIXED, max_new_tokens=20)[0].text
