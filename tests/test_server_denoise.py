"""The denoising view's event stream (``POST /v1/denoise``) and the page's files, without a browser.

The events must rebuild exactly what ``LLM.generate`` decodes (text, tokens, NFE) and what
``fastdllm.visualize.record`` traces (the forward that decoded each token); requests are
validated as the OpenAI routes validate theirs; the job shares the batcher with OpenAI requests;
a client that goes away cancels it; the page and its assets are served from the package with no
external URL. The browser test is ``test_denoise_page_browser.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import fastdllm
from examples.denoise_page import browser
from fastdllm.serve import create_app
from fastdllm.serve.batcher import Batcher, Job
from fastdllm.serve.frames import Frame
from fastdllm.serve.page import STATIC_DIR
from fastdllm.serve.stream import Delta, JobStream
from fastdllm.visualize import record
from tests.helpers import make_tiny_checkpoint, make_tiny_word_checkpoint

NAME = "tiny-word"
QUESTION = "Lily has 12 apples and buys 30 more. How many apples does she have?"
MESSAGES = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return fastdllm.load(str(make_tiny_word_checkpoint(tmp_path_factory.mktemp("denoise") / "m")), max_batch_size=4)


@pytest.fixture(scope="module")
def http(llm):
    with TestClient(create_app(llm, NAME, default_max_tokens=24)) as c:
        yield c


def events(lines) -> list[dict]:
    """The JSON events of an SSE body (``data: [DONE]`` must end it)."""
    data = [ln[6:] for ln in lines if ln.startswith("data: ")]
    assert data and data[-1] == "[DONE]", data[-3:]
    return [json.loads(d) for d in data[:-1]]


def denoise(http, **body) -> list[dict]:
    with http.stream("POST", "/v1/denoise", json={"model": NAME, **body}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return events(r.iter_lines())


def test_events_rebuild_generate_and_the_trace(http, llm):
    opts = dict(max_new_tokens=48, threshold=0.7)
    ref = llm.generate(MESSAGES, **opts)[0]
    _, trace = record(llm, MESSAGES, **opts)
    evs = denoise(http, messages=MESSAGES, max_tokens=48, threshold=0.7)
    start, steps, done = evs[0], [e for e in evs if e["type"] == "step"], evs[-1]
    assert start["type"] == "start" and start["mode"] == "diffusion" and start["threshold"] == 0.7
    assert (start["block_size"], start["sub_block_size"]) == (32, 8)
    assert start["prompt_tokens"] == len(ref.prompt_token_ids) and start["max_tokens"] == 48

    # the committed text, token count and forwards are generate's
    assert "".join(e.get("text", "") for e in evs) == ref.text
    assert done["type"] == "done" and done["finish_reason"] == ref.finish_reason
    assert done["usage"]["completion_tokens"] == len(ref.token_ids) == steps[-1]["tokens"]
    assert done["fastdllm"]["nfe"] == ref.nfe == steps[-1]["forward"] and ref.nfe > 10
    forwards = [e["forward"] for e in steps]
    assert forwards == sorted(set(forwards))  # increasing; a slow reader may get some merged

    # every block's last frame: the forward that decoded each token is the trace's, its text the token's
    last = {e["block"]["start"]: e["block"] for e in steps}
    at, pieces = {}, {}
    for b in last.values():
        assert len(b["pieces"]) == len(b["decoded_at"]) == 32 and b["index"] == b["start"] // 32
        for i, (p, f) in enumerate(zip(b["pieces"], b["decoded_at"])):
            at[b["start"] + i], pieces[b["start"] + i] = f, p
    gen = [start["prompt_tokens"] + i for i in range(len(ref.token_ids))]
    assert [at[p] for p in gen] == trace.step_of
    assert [pieces[p] for p in gen] == [llm.tokenizer.decode([t], skip_special_tokens=False) for t in ref.token_ids]

    # intermediate states: masked cells, the cells just decoded, the sub-block being decoded
    assert any(None in e["block"]["pieces"][e["block"]["prompt"]:] for e in steps)
    for e in steps:
        b = e["block"]
        assert all(b["pieces"][i] is not None and b["decoded_at"][i] <= e["forward"] for i in b["new"])
        assert all(b["decoded_at"][i] is None for i in range(b["prompt"]))
        if b["active"] is not None:
            assert b["active"] % 8 == 0 and None in b["pieces"][b["active"]:b["active"] + 8]
        assert len(json.dumps(e)) < 4096  # the block, never the history


def test_completion_body_and_ar_mode(http, llm):
    ref = llm.generate(QUESTION, chat=False, max_new_tokens=20, mode="ar")[0]
    evs = denoise(http, prompt=QUESTION, max_tokens=20, mode="ar")
    steps = [e for e in evs if e["type"] == "step"]
    assert evs[0]["mode"] == "ar" and evs[0]["sub_block_size"] == 1
    assert "".join(e.get("text", "") for e in evs) == ref.text
    assert evs[-1]["fastdllm"]["nfe"] == ref.nfe and evs[-1]["usage"]["completion_tokens"] == len(ref.token_ids)
    before = 0
    for e in steps:  # one token per forward (a slow reader may get several forwards in one event)
        assert len(e["block"]["new"]) <= e["forward"] - before
        before = e["forward"]
    at = {e["block"]["start"] + i: f for e in steps for i, f in enumerate(e["block"]["decoded_at"])}
    first = evs[0]["prompt_tokens"]
    assert [at[first + i] for i in range(len(ref.token_ids))] == list(range(1, len(ref.token_ids) + 1))
    ids = llm.encode(QUESTION, chat=False) + ref.token_ids  # AR rows: the aligned windows of 32 positions
    for e in steps:
        b = e["block"]
        assert b["start"] % 32 == 0 and b["active"] == next((i for i, p in enumerate(b["pieces"]) if p is None), None)
        for i, piece in enumerate(b["pieces"]):
            if piece is not None:
                assert piece == llm.tokenizer.decode([ids[b["start"] + i]], skip_special_tokens=False)


@pytest.mark.parametrize("body,status,needle", [
    ({"messages": MESSAGES, "threshold": 1.5}, 400, "threshold"),
    ({"messages": MESSAGES, "small_block_size": 5}, 400, "divide"),
    ({"messages": MESSAGES, "surprise": 1}, 400, "surprise"),
    ({"messages": MESSAGES, "max_tokens": "5"}, 400, "max_tokens"),
    ({"messages": MESSAGES, "stream": False}, 400, "always streams"),
    ({"messages": []}, 400, "messages"),
    ({"messages": MESSAGES, "max_tokens": 10**6}, 400, "maximum context length"),
    ({"prompt": ["one", "two"]}, 400, "one prompt"),
    ({"prompt": "x", "echo": True}, 400, "echo"),
    ({"prompt": [1, 2, 10**8]}, 400, "vocabulary"),
    ({"messages": MESSAGES, "model": "other"}, 404, "does not exist"),
])
def test_bad_requests_get_openai_errors(http, body, status, needle):
    r = http.post("/v1/denoise", json={"model": NAME, **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and needle in err["message"]
    if needle == "maximum context length":
        assert err["code"] == "context_length_exceeded"


def test_malformed_json_and_the_server_keeps_working(http):
    r = http.post("/v1/denoise", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = http.post("/v1/denoise", json=[1, 2])
    assert r.status_code == 400 and "object" in r.json()["error"]["message"]
    assert denoise(http, messages=MESSAGES, max_tokens=4)[-1]["usage"]["completion_tokens"] == 4
    assert http.get("/health").json()["open_jobs"] == 0


def test_page_and_assets_ship_in_the_package_with_no_external_url(http):
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/denoise.js" in page.text and "/static/denoise.css" in page.text
    for name, kind in (("denoise.js", "javascript"), ("denoise.css", "text/css")):
        r = http.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    for f in STATIC_DIR.iterdir():  # offline: nothing fetched from elsewhere
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", f.read_text()), f
    assert http.get("/static/nothing.js").status_code == 404
    cfg = http.get("/v1/denoise/config").json()
    assert cfg["model"] == NAME and cfg["modes"] == ["diffusion", "ar"] and cfg["chat"] and cfg["tokenizer"]
    assert (cfg["block_size"], cfg["sub_block_size"], cfg["threshold"]) == (32, 8, 0.9)
    assert cfg["max_tokens"] == 24  # at most the server's default
    heldout = Path(http.app.state.llm.checkpoint.path) / "heldout.jsonl"
    questions = [json.loads(line)["question"] for line in heldout.read_text().splitlines()]
    assert cfg["examples"] and set(cfg["examples"]) <= set(questions)


def test_frames_coalesce_one_per_block():
    def frame(start, forward, new):
        return Frame(forward, start, [1] * 4, [1] * 4, new, 0, None, forward, 0.0)

    async def main():
        stream = JobStream(asyncio.get_running_loop())
        stream.put(0, Delta("a", [1], frames=[frame(0, 1, [0])]))
        stream.put(0, Delta("b", [2], frames=[frame(0, 2, [1])]))
        stream.put(0, Delta("c", [3], frames=[frame(4, 3, [0])]))
        stream.close()
        return [b async for b in stream.deltas()]

    ((_, d),), = asyncio.run(main())
    assert d.text == "abc" and [(f.block_start, f.forward, f.new) for f in d.frames] == [(0, 2, [0, 1]), (4, 3, [0])]


def test_frame_jobs_share_the_batch_with_openai_jobs(llm):
    """Denoise jobs (frames on) and plain jobs decode in the same forwards, each as it would alone."""
    prompts = [MESSAGES, [{"role": "user", "content": "Sam has 5 pens."}], MESSAGES]
    solo = [llm.generate(p, max_new_tokens=24, threshold=0.7)[0] for p in prompts]

    async def main():
        loop = asyncio.get_running_loop()
        b = Batcher(llm.model, 4, 4 * 256)
        jobs = []
        for k, p in enumerate(prompts):
            seqs, params = llm.prepare([p], max_new_tokens=24, threshold=0.7)
            jobs.append(Job(seqs, JobStream(loop), frames=k != 1))
            b.submit(jobs[-1])
        b.start()
        out = []
        for j in jobs:
            ids, frames = [], 0
            async for batch in j.stream.deltas():
                for _, d in batch:
                    ids += d.token_ids
                    frames += len(d.frames)
            out.append((ids, frames))
        b.stop()
        return b, out

    b, out = asyncio.run(main())
    assert b.largest_batch == 3
    assert [ids for ids, _ in out] == [r.token_ids for r in solo]
    assert out[0][1] > 0 and out[1][1] == 0 and out[2][1] > 0  # frames only for the jobs that asked


def test_a_client_going_away_cancels_its_job(llm):
    app = create_app(llm, NAME)
    body = {"model": NAME, "messages": MESSAGES, "max_tokens": 400, "ignore_eos": True, "threshold": 1.0}
    with browser.serve(app) as base:
        with httpx.stream("POST", base + "/v1/denoise", json=body, timeout=120) as r:
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: ")
                if seen == 3:  # the start and two forwards: hang up
                    break
        deadline = time.monotonic() + 60
        while (stats := app.state.batcher.stats())["open_jobs"] and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics = httpx.get(base + "/metrics").text
    assert stats["open_jobs"] == stats["running"] == stats["kv_used"] == 0
    finished = {s.labels["reason"]: s.value for f in text_string_to_metric_families(metrics) for s in f.samples
                if s.name == "fastdllm_sequences_finished_total"}
    assert finished == {"cancelled": 1.0}


def test_a_checkpoint_without_tokenizer_streams_token_ids(tmp_path):
    llm = fastdllm.load(str(make_tiny_checkpoint(tmp_path / "ids", "fast_dllm", confident=True)))
    ref = llm.generate([[5, 6, 7]], max_new_tokens=12, stop_token_ids=[])[0]
    with TestClient(create_app(llm, NAME)) as http:
        cfg = http.get("/v1/denoise/config").json()
        evs = denoise(http, prompt=[5, 6, 7], max_tokens=12, ignore_eos=True)
    assert not cfg["tokenizer"] and not cfg["chat"] and cfg["examples"] == []
    block = [e for e in evs if e["type"] == "step"][-1]["block"]
    assert block["pieces"][:3 + 12] == [str(t) for t in [5, 6, 7, *ref.token_ids]]  # cells show the ids
    assert evs[-1]["fastdllm"]["nfe"] == ref.nfe
