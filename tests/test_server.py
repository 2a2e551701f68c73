"""The OpenAI-compatible server, driven by the official ``openai`` client.

Every answer is checked against ``LLM.generate`` with the same options (the server must not
change what the engine decodes), streamed text against the non-streamed text, batched jobs
against one-by-one jobs; bad requests must get OpenAI error bodies and leave the server working.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

import fastdllm
from fastdllm.serve import create_app
from fastdllm.serve.batcher import Batcher, Job, runs_alone
from tests.helpers import make_tiny_chat_checkpoint

NAME = "tiny-bd"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_tiny_chat_checkpoint(tmp_path_factory.mktemp("srv") / "m")


@pytest.fixture(scope="module")
def llm(ckpt):
    return fastdllm.load(str(ckpt), max_batch_size=4)


@pytest.fixture(scope="module")
def http(llm):
    with TestClient(create_app(llm, NAME, default_max_tokens=24)) as c:
        yield c


@pytest.fixture(scope="module")
def client(http):
    return openai.OpenAI(base_url=str(http.base_url) + "/v1", api_key="unused", http_client=http, max_retries=0)


MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


def test_models_endpoint(client):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME


def test_chat_completion_matches_generate(client, llm):
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=20)
    ref = llm.generate(MESSAGES, max_new_tokens=20)[0]
    assert r.object == "chat.completion" and r.model == NAME
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.text
    assert r.choices[0].finish_reason == ref.finish_reason
    assert r.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert r.usage.completion_tokens == len(ref.token_ids) and r.usage.total_tokens == r.usage.prompt_tokens + 20
    stats = r.model_extra["fastdllm"]
    assert stats["nfe"] == ref.nfe and stats["tpf"] == pytest.approx(ref.tpf)


def test_chat_default_max_tokens_and_developer_role(client, llm):
    msgs = [{"role": "developer", "content": "Be brief."}, *MESSAGES]
    r = client.chat.completions.create(model=NAME, messages=msgs)
    ref = llm.generate([{"role": "system", "content": "Be brief."}, *MESSAGES], max_new_tokens=24)[0]
    assert r.choices[0].message.content == ref.text and r.usage.completion_tokens == len(ref.token_ids)


def test_completion_is_plain_text_and_honours_options(client, llm):
    r = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=12,
                                  extra_body={"threshold": 0.5, "use_block_cache": True})
    ref = llm.generate("Once upon a time", chat=False, max_new_tokens=12, threshold=0.5, use_block_cache=True)[0]
    assert r.object == "text_completion" and r.choices[0].text == ref.text
    assert r.usage.prompt_tokens == len(llm.encode("Once upon a time", chat=False))
    ar = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=12, extra_body={"mode": "ar"})
    assert ar.choices[0].text == llm.generate("Once upon a time", chat=False, max_new_tokens=12, mode="ar")[0].text
    assert ar.model_extra["fastdllm"]["tpf"] <= 1.0


def test_completion_batch_of_prompts_and_token_ids(client, llm):
    prompts = ["Hello there", "A much longer prompt about the history of the sea"]
    r = client.completions.create(model=NAME, prompt=prompts, max_tokens=10)
    refs = llm.generate(prompts, chat=False, max_new_tokens=10)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == [x.text for x in refs]
    ids = llm.encode("Hello there", chat=False)
    r2 = client.completions.create(model=NAME, prompt=ids, max_tokens=10, echo=True)
    assert r2.choices[0].text == llm.decode(ids) + refs[0].text


def test_stop_strings(client, llm):
    full = llm.generate(MESSAGES, max_new_tokens=24, stop_token_ids=[])[0].text
    stop = full[len(full) // 2:len(full) // 2 + 2]
    ref = llm.generate(MESSAGES, max_new_tokens=24, stop=[stop])[0]
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=24, stop=[stop])
    assert r.choices[0].message.content == ref.text and stop not in ref.text
    assert r.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=24, stop=[stop],
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text


def test_streaming_chat_equals_non_streaming(client, llm):
    ref = llm.generate(MESSAGES, max_new_tokens=20)[0]
    chunks = list(client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=20, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == ref.text and sum(1 for p in pieces if p) >= 2  # really incremental
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [ref.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ref.token_ids)
    assert len({c.id for c in chunks}) == 1


def test_streaming_completion(client, llm):
    ref = llm.generate("The weather", chat=False, max_new_tokens=16)[0]
    chunks = list(client.completions.create(model=NAME, prompt="The weather", max_tokens=16, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason == ref.finish_reason


@pytest.mark.parametrize("kwargs,status,needle", [
    (dict(model="nope"), 404, "does not exist"),
    (dict(temperature=-1), 400, "temperature"),
    (dict(n=2), 400, "n > 1"),
    (dict(messages=[]), 400, "messages"),
    (dict(extra_body={"threshold": 1.5}), 400, "threshold"),
    (dict(extra_body={"small_block_size": 5}), 400, "divide"),
    (dict(extra_body={"unknown_knob": 1}), 400, "unknown_knob"),
    (dict(messages=[{"role": "wizard", "content": "hi"}]), 400, "role"),
    (dict(max_tokens=-3), 400, "max_tokens"),
    (dict(logprobs=True), 400, "logprobs"),
])
def test_bad_chat_requests_get_openai_errors(client, kwargs, status, needle):
    args = dict(model=NAME, messages=MESSAGES, max_tokens=4) | kwargs
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(**args)
    assert e.value.status_code == status
    body = e.value.response.json()["error"]
    assert needle in body["message"] and body["type"] in ("invalid_request_error", "not_found_error")
    # nothing lost: the server still answers
    assert client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2).usage.completion_tokens == 2


def test_raw_http_errors(http, llm):
    r = http.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = http.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = http.post("/v1/completions", json={"model": NAME, "prompt": "x " * 400, "max_tokens": 4})
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]
    r = http.post("/v1/completions", json={"model": NAME, "prompt": [1, 2, 10**8]})
    assert r.status_code == 400 and "vocabulary" in r.json()["error"]["message"]
    assert http.get("/health").json()["status"] == "ok"


# ---- the batcher on its own: deterministic batching and cancellation ---------------------------------

def _jobs(llm, loop, prompts, **opts):
    jobs = []
    for p in prompts:
        seqs, params = llm.prepare([p], **opts)
        jobs.append(Job(seqs, params, runs_alone(opts, len(seqs)), loop))
    return jobs


async def _drain(job: Job):
    last = None
    while (item := await job.queue.get()) is not None:
        assert not isinstance(item, Exception), item
        last = item
    return last


def test_waiting_jobs_are_batched_and_match_solo_runs(llm):
    prompts = ["Hi", "What is two plus two?", "Write a long letter to a friend about the sea.", "Count to ten"]
    solo = llm.generate(prompts, max_new_tokens=20)  # reference: plain generate (batch-invariant)

    async def main():
        loop = asyncio.get_running_loop()
        b = Batcher(llm, max_batch_size=4)
        jobs = _jobs(llm, loop, prompts, max_new_tokens=20)
        # an AR job with another threshold and stop ids: it joins when a slot frees up
        jobs += _jobs(llm, loop, ["Hi"], max_new_tokens=20, mode="ar", stop_token_ids=[])
        for j in jobs:
            b.submit(j)  # all waiting before the worker starts
        b.start()
        out = [await _drain(j) for j in jobs]
        b.stop()
        return b, out

    b, out = asyncio.run(main())
    assert b.batches == 1 and b.largest_batch == 4 and b.joined == 1
    assert [p.token_ids for p in out[:4]] == [r.token_ids for r in solo]
    assert [p.text for p in out[:4]] == [r.text for r in solo]
    assert out[4].token_ids == llm.generate("Hi", max_new_tokens=20, mode="ar", stop_token_ids=[])[0].token_ids


def test_jobs_join_a_running_batch_first_come_first_served(llm):
    long_prompt, late = "Write a very long story about the sea.", ["Hi", "What is two plus two?"]
    opts = dict(max_new_tokens=150, stop_token_ids=[])
    solo_long = llm.generate(long_prompt, **opts)[0]
    solo_late = llm.generate(late, max_new_tokens=20, threshold=0.5)
    solo_ar = llm.generate("Hi", max_new_tokens=20, mode="ar")[0]
    sampled = dict(max_new_tokens=12, temperature=0.8, seed=7)
    solo_sampled = llm.generate(late, **sampled)

    async def main():
        loop = asyncio.get_running_loop()
        b = Batcher(llm, max_batch_size=4, kv_cache_tokens=256)
        (first,) = _jobs(llm, loop, [long_prompt], **opts)
        gate, send = threading.Event(), first.send

        def send_then_hold(x):  # the worker pauses after the first progress until the queue is filled
            send(x)
            if x is not None and not gate.is_set():
                gate.wait(30)

        first.send = send_then_hold
        b.submit(first)
        b.start()
        item = await first.queue.get()  # the long job is decoding: queue more work behind it
        early = _jobs(llm, loop, late, max_new_tokens=20, threshold=0.5)  # 2 slots
        ar = _jobs(llm, loop, ["Hi"], max_new_tokens=20, mode="ar")  # the last free slot
        later = _jobs(llm, loop, late, max_new_tokens=20, threshold=0.5)  # wait for slots to free up
        seqs, params = llm.prepare(late, **sampled)  # seeded sampling over 2 prompts: a run of its own
        alone = Job(seqs, params, runs_alone(sampled, 2), loop)
        for j in (*early, *ar, *later, alone):
            b.submit(j)
        gate.set()
        rest = await _drain(first)
        outs = [await _drain(j) for j in (*early, *ar, *later)]
        last = alone.seqs
        await _drain(alone)
        b.stop()
        return b, item, rest, outs, last

    b, item, rest, outs, alone = asyncio.run(main())
    assert item.token_ids and not item.finished
    assert rest.token_ids == solo_long.token_ids
    assert b.joined == 5 and b.batches == 2 and b.largest_batch == 4
    assert [o.token_ids for o in outs[:2]] == [r.token_ids for r in solo_late]
    assert outs[2].token_ids == solo_ar.token_ids
    assert [o.token_ids for o in outs[3:]] == [r.token_ids for r in solo_late]
    assert [s.output for s in alone] == [r.token_ids for r in solo_sampled]


def test_cancelled_job_leaves_the_batch_without_disturbing_others(llm):
    prompts = ["Tell me a story", "Describe a cat"]
    solo = llm.generate(prompts[1], max_new_tokens=40, stop_token_ids=[])[0]

    async def main():
        loop = asyncio.get_running_loop()
        b = Batcher(llm, max_batch_size=4)
        gone, kept = _jobs(llm, loop, prompts, max_new_tokens=40, stop_token_ids=[])
        gone.cancelled.set()  # the client disconnected
        b.submit(gone)
        b.submit(kept)
        b.start()
        g, k = await _drain(gone), await _drain(kept)
        b.stop()
        return g, k, gone

    g, k, gone = asyncio.run(main())
    assert gone.seqs[0].finish_reason == "cancelled" and len(gone.seqs[0].output) < 40
    assert k.token_ids == solo.token_ids and k.finish_reason == "length"


# ---- the real command: uvicorn on a TCP port -----------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fastdllm_serve_end_to_end(ckpt, llm):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fastdllm", "serve", "--model", str(ckpt), "--port", str(port),
                             "--served-model-name", NAME, "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stderr.read()}")
            time.sleep(0.1)
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        r = c.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=12)
        assert r.choices[0].message.content == llm.generate(MESSAGES, max_new_tokens=12)[0].text
        with httpx.stream("POST", base + "/v1/chat/completions",
                          json={"model": NAME, "messages": MESSAGES, "max_tokens": 12, "stream": True}) as s:
            lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["object"] == "chat.completion.chunk"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_rejects_bad_flags():
    r = subprocess.run([sys.executable, "-m", "fastdllm", "serve", "--port", "0", "--model", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--port" in r.stderr and "Traceback" not in r.stderr
