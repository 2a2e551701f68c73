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
import time
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

import fastdllm
from fastdllm.serve import create_app
from fastdllm.serve.batcher import Batcher, Job, runs_alone
from fastdllm.serve.stream import Delta, JobStream
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
    joint = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=12,
                                      extra_body={"acceptance": "joint", "threshold": 0.3})
    assert joint.choices[0].text == llm.generate("Once upon a time", chat=False, max_new_tokens=12,
                                                 acceptance="joint", threshold=0.3)[0].text


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
    (dict(extra_body={"acceptance": "best"}), 400, "acceptance"),
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
    err = r.json()["error"]
    assert r.status_code == 400 and "not valid JSON (at character 1)" in err["message"] and err["param"] is None
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
        jobs.append(Job(seqs, JobStream(loop), runs_alone(opts, len(seqs))))
    return jobs


def _batcher(llm, max_batch_size=4, slot_tokens=256, **kw) -> Batcher:
    return Batcher(llm.model, max_batch_size, max_batch_size * slot_tokens, **kw)


async def _drain(job: Job) -> list[dict]:
    """Every sequence's whole answer, rebuilt from the deltas."""
    out = [{"token_ids": [], "text": "", "finish_reason": None, "deltas": 0, "nfe": 0} for _ in job.seqs]
    async for batch in job.stream.deltas():
        for i, d in batch:
            assert not out[i]["finish_reason"], "a delta after the end"
            out[i]["token_ids"] += d.token_ids
            out[i]["text"] += d.text
            out[i]["finish_reason"], out[i]["nfe"] = d.finish_reason, d.nfe
            out[i]["deltas"] += 1
    return out


def test_waiting_jobs_are_batched_and_match_solo_runs(llm):
    prompts = ["Hi", "What is two plus two?", "Write a long letter to a friend about the sea.", "Count to ten"]
    solo = llm.generate(prompts, max_new_tokens=20)  # reference: plain generate (batch-invariant)

    async def main():
        loop = asyncio.get_running_loop()
        b = _batcher(llm)
        jobs = _jobs(llm, loop, prompts, max_new_tokens=20)
        # an AR job with other stop ids: it joins when a place frees up
        jobs += _jobs(llm, loop, ["Hi"], max_new_tokens=20, mode="ar", stop_token_ids=[])
        for j in jobs:
            b.submit(j)  # all waiting before the worker starts
        b.start()
        out = [(await _drain(j))[0] for j in jobs]
        stats = b.stats()
        b.stop()
        return b, out, stats

    b, out, stats = asyncio.run(main())
    assert b.largest_batch == 4
    assert [o["token_ids"] for o in out[:4]] == [r.token_ids for r in solo]
    assert [o["text"] for o in out[:4]] == [r.text for r in solo]
    assert out[4]["token_ids"] == llm.generate("Hi", max_new_tokens=20, mode="ar", stop_token_ids=[])[0].token_ids
    assert stats["open_jobs"] == 0 and stats["waiting"] == stats["running"] == stats["kv_used"] == 0


def test_jobs_join_a_running_batch_and_seeded_sampling_runs_alone(llm):
    long_prompt, late = "Write a very long story about the sea.", ["Hi", "What is two plus two?"]
    opts = dict(max_new_tokens=150, stop_token_ids=[])
    solo_long = llm.generate(long_prompt, **opts)[0]
    solo_late = llm.generate(late, max_new_tokens=20, threshold=0.5)
    solo_ar = llm.generate("Hi", max_new_tokens=20, mode="ar")[0]
    sampled = dict(max_new_tokens=12, temperature=0.8, seed=7)
    solo_sampled = llm.generate(late, **sampled)

    async def main():
        loop = asyncio.get_running_loop()
        b = _batcher(llm)
        (first,) = _jobs(llm, loop, [long_prompt], **opts)
        b.submit(first)
        b.start()
        deltas = first.stream.deltas()
        head = await deltas.__anext__()  # the long job is decoding: queue more work behind it
        early = _jobs(llm, loop, late, max_new_tokens=20, threshold=0.5)
        ar = _jobs(llm, loop, ["Hi"], max_new_tokens=20, mode="ar")
        later = _jobs(llm, loop, late, max_new_tokens=20, threshold=0.5)
        seqs, params = llm.prepare(late, **sampled)  # seeded sampling over 2 prompts: runs alone
        alone = Job(seqs, JobStream(loop), runs_alone(sampled, 2))
        for j in (*early, *ar, *later, alone):
            b.submit(j)
        rest = [head]
        async for batch in deltas:
            rest.append(batch)
        outs = [(await _drain(j))[0] for j in (*early, *ar, *later)]
        await _drain(alone)
        b.stop()
        return b, rest, outs, alone.seqs

    b, rest, outs, alone = asyncio.run(main())
    long_ids = [t for batch in rest for _, d in batch for t in d.token_ids]
    assert long_ids == solo_long.token_ids and len(rest) > 1
    assert b.largest_batch == 4
    assert [o["token_ids"] for o in outs[:2]] == [r.token_ids for r in solo_late]
    assert outs[2]["token_ids"] == solo_ar.token_ids
    assert [o["token_ids"] for o in outs[3:]] == [r.token_ids for r in solo_late]
    assert [s.output for s in alone] == [r.token_ids for r in solo_sampled]


def test_cancelled_jobs_leave_without_disturbing_others(llm):
    prompts = ["Tell me a story", "Describe a cat", "A third one"]
    solo = llm.generate(prompts[1], max_new_tokens=40, stop_token_ids=[])[0]

    async def main():
        loop = asyncio.get_running_loop()
        b = _batcher(llm)
        waiting, kept, running = _jobs(llm, loop, prompts, max_new_tokens=40, stop_token_ids=[])
        b.submit(waiting)
        b.cancel(waiting)  # the client disconnected while the request was queued
        b.submit(kept)
        b.submit(running)
        b.start()
        deltas = running.stream.deltas()
        await deltas.__anext__()
        b.cancel(running)  # ... and this one mid-stream
        async for _ in deltas:
            pass
        w, k = await _drain(waiting), await _drain(kept)
        stats = b.stats()
        b.stop()
        return w, k, stats

    w, k, stats = asyncio.run(main())
    assert w[0]["finish_reason"] == "cancelled" and w[0]["token_ids"] == [] and w[0]["nfe"] == 0  # no prefill
    assert w[0]["deltas"] == 1  # just the end
    assert k[0]["token_ids"] == solo.token_ids and k[0]["finish_reason"] == "length"
    assert stats["open_jobs"] == 0 and stats["running"] == stats["kv_spans"] == 0


def test_a_slow_consumer_gets_coalesced_deltas():
    async def main():
        stream = JobStream(asyncio.get_running_loop())
        for i in range(100):  # the engine runs ahead of a client that is not reading
            stream.put(0, Delta(f"{i},", [i], nfe=i))
        stream.put(1, Delta("x", [7], True, "stop", 3))
        stream.close()
        assert stream.pending == 2  # one merged delta per sequence, however many steps ran
        return [b async for b in stream.deltas()]

    (batch,) = asyncio.run(main())
    (i0, d0), (i1, d1) = batch
    assert (i0, i1) == (0, 1) and d0.token_ids == list(range(100)) and d0.text == "".join(f"{i}," for i in range(100))
    assert d0.nfe == 99 and not d0.finished and d1.finish_reason == "stop"


# ---- the real command: uvicorn on a TCP port -----------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fastdllm_serve_end_to_end(ckpt, llm):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fastdllm", "serve", "--model", str(ckpt), "--port", str(port),
                             "--served-model-name", NAME, "--log-level", "warning", "--max-model-len", "200",
                             "--max-batch-size", "3", "--prefill-chunk", "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(3000):  # a busy machine may take minutes to start it
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
        assert c.models.list().data[0].model_extra["max_model_len"] == 200
        too_long = httpx.post(base + "/v1/completions", json={"model": NAME, "prompt": [1, 2], "max_tokens": 199})
        assert too_long.status_code == 400 and "201 tokens" in too_long.json()["error"]["message"]
        health = httpx.get(base + "/health").json()
        assert health["kv_size"] == 3 * 200 and health["open_jobs"] == 0
        assert "fastdllm_forward_passes_total" in httpx.get(base + "/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("flag,value", [("--port", "0"), ("--max-model-len", "0"), ("--prefill-chunk", "-1"),
                                        ("--max-waiting", "0"), ("--kv-cache-tokens", "0")])
def test_serve_rejects_bad_flags(flag, value):
    args = ["--port", "8000", flag, value] if flag != "--port" else ["--port", value]
    r = subprocess.run([sys.executable, "-m", "fastdllm", "serve", "--model", "x", *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and flag in r.stderr and "Traceback" not in r.stderr


def test_serve_rejects_limits_the_model_cannot_hold(ckpt):
    r = subprocess.run([sys.executable, "-m", "fastdllm", "serve", "--model", str(ckpt), "--max-model-len", "4096"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--max-model-len" in r.stderr and "256" in r.stderr and "Traceback" not in r.stderr
