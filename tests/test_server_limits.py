"""The server's limits and guards: context-length 400s, a KV cache that never grows past the
flags, every malformed field a 400 with an OpenAI error body, and ``/metrics`` counting what
was asked (read back with prometheus_client's own parser)."""

from __future__ import annotations

import math

import openai
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import fastdllm
from fastdllm.serve import create_app
from fastdllm.serve.limits import Limits
from tests.helpers import make_tiny_chat_checkpoint

NAME = "tiny-bd"
MAX_LEN, SLOT, BATCH = 100, 128, 2  # the tiny checkpoint's context is 256
MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return fastdllm.load(str(make_tiny_chat_checkpoint(tmp_path_factory.mktemp("lim") / "m")), max_batch_size=BATCH)


@pytest.fixture(scope="module")
def app(llm):
    return create_app(llm, NAME, max_batch_size=BATCH, kv_cache_tokens=SLOT, max_model_len=MAX_LEN,
                      default_max_tokens=24)


@pytest.fixture(scope="module")
def http(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def client(http):
    return openai.OpenAI(base_url=str(http.base_url) + "/v1", api_key="unused", http_client=http, max_retries=0)


def error_of(r) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def cache_shape(app):
    cache = app.state.batcher.engine.runner.cache
    return tuple(cache.k.shape), cache.nbytes


# ---- limits --------------------------------------------------------------------------------------

def test_prompt_plus_max_tokens_over_the_limit_is_a_400_naming_both_numbers(http, app, llm):
    before = cache_shape(app)
    cfg = llm.config
    assert before[0] == (cfg.num_hidden_layers, 1, cfg.num_key_value_heads, BATCH * SLOT, cfg.head_dim)
    r = http.post("/v1/completions", json={"model": NAME, "prompt": [1, 2, 3], "max_tokens": 10**9})
    e = error_of(r)
    assert r.status_code == 400 and e["code"] == "context_length_exceeded" and e["param"] == "max_tokens"
    assert f"maximum context length is {MAX_LEN} tokens" in e["message"] and str(3 + 10**9) in e["message"]
    n = len(llm.encode(MESSAGES, chat=True))
    r = http.post("/v1/chat/completions", json={"model": NAME, "messages": MESSAGES, "max_tokens": MAX_LEN - n + 1})
    assert r.status_code == 400 and f"{MAX_LEN + 1} tokens ({n} in the prompt" in error_of(r)["message"]
    r = http.post("/v1/completions", json={"model": NAME, "prompt": list(range(1, MAX_LEN + 1))})
    assert r.status_code == 400 and f"the prompt has {MAX_LEN} tokens" in error_of(r)["message"]
    assert app.state.batcher.stats()["open_jobs"] == 0  # nothing reached the engine
    assert cache_shape(app) == before


def test_requests_that_fit_run_and_default_lengths_are_cut_to_fit(client, http, app, llm):
    before = cache_shape(app)
    exact = client.completions.create(model=NAME, prompt=list(range(1, 91)), max_tokens=MAX_LEN - 90,
                                      extra_body={"threshold": 0.0})
    assert exact.usage.total_tokens <= MAX_LEN
    default = client.completions.create(model=NAME, prompt=list(range(1, 96)), extra_body={"threshold": 0.0})
    assert default.usage.completion_tokens <= MAX_LEN - 95  # 16 by default, cut to the 5 that fit
    ar = client.completions.create(model=NAME, prompt=list(range(1, 96)), max_tokens=5, extra_body={"mode": "ar"})
    assert ar.usage.completion_tokens <= 5
    fixed = client.completions.create(model=NAME, prompt=[5, 6, 7], max_tokens=40, extra_body={"ignore_eos": True})
    ref = llm.generate([[5, 6, 7]], chat=False, max_new_tokens=40, stop_token_ids=[])[0]
    assert fixed.usage.completion_tokens == 40 and fixed.choices[0].text == ref.text
    assert [m.model_extra["max_model_len"] for m in client.models.list().data] == [MAX_LEN]
    assert cache_shape(app) == before  # allocated once at start, never grown


def test_limit_flags_are_checked():
    assert Limits.from_flags(256, 4) == Limits(256, 4 * 256, 256)
    assert Limits.from_flags(32768, 8) == Limits(8 * 2048, 8 * 2048, 32768)
    assert Limits.from_flags(32768, 2, max_model_len=4096).kv_tokens == 2 * 4096
    with pytest.raises(ValueError, match="1..256"):
        Limits.from_flags(256, 2, max_model_len=300)
    with pytest.raises(ValueError, match="does not fit the KV cache"):
        Limits.from_flags(256, 2, kv_cache_tokens=64, max_model_len=200)


# ---- validation ------------------------------------------------------------------------------------

CHAT = {"model": NAME, "messages": MESSAGES, "max_tokens": 4}
COMPLETION = {"model": NAME, "prompt": "Once upon a time", "max_tokens": 4}
BAD = [  # (endpoint, fields replacing the good body's, text the message must contain)
    ("chat", {"max_tokens": "5"}, "max_tokens"),
    ("chat", {"max_tokens": 5.5}, "max_tokens"),
    ("chat", {"max_tokens": -1}, "max_tokens"),
    ("chat", {"max_tokens": 10**12}, "maximum context length"),
    ("chat", {"max_completion_tokens": 10**30}, "maximum context length"),
    ("chat", {"temperature": "hot"}, "temperature"),
    ("chat", {"temperature": 3}, "temperature"),
    ("chat", {"top_p": 0}, "top_p"),
    ("chat", {"seed": 2**70}, "seed"),
    ("chat", {"seed": -(2**70)}, "seed"),
    ("chat", {"seed": "1"}, "seed"),
    ("chat", {"block_size": 0}, "block_size"),
    ("chat", {"block_size": 10**6}, "block_size"),
    ("chat", {"block_size": 12}, "divide"),
    ("chat", {"small_block_size": 0}, "small_block_size"),
    ("chat", {"top_k": -1}, "top_k"),
    ("chat", {"threshold": True}, "threshold"),
    ("chat", {"use_block_cache": "yes"}, "use_block_cache"),
    ("chat", {"mode": "turbo"}, "mode"),
    ("chat", {"stream": "yes"}, "stream"),
    ("chat", {"stream_options": {"include_usage": True}}, "stream_options"),
    ("chat", {"stream": True, "stream_options": {"include_usage": "yes"}}, "include_usage"),
    ("chat", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("chat", {"stop": 5}, "stop"),
    ("chat", {"n": 0}, "n"),
    ("chat", {"messages": "hi"}, "messages"),
    ("chat", {"messages": [{"content": "hi"}]}, "role"),
    ("chat", {"messages": [{"role": "user", "content": 5}]}, "content"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text content"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "text"),
    ("chat", {"model": 5}, "model"),
    ("chat", {"frobnicate": 1}, "frobnicate"),
    ("chat", {"user": 5}, "user"),
    ("chat", {"logprobs": 3}, "logprobs"),
    ("completions", {"prompt": []}, "prompt"),
    ("completions", {"prompt": [[]]}, "empty"),
    ("completions", {"prompt": [-1]}, "vocabulary"),
    ("completions", {"prompt": [1, "a"]}, "prompt"),
    ("completions", {"prompt": {"x": 1}}, "prompt"),
    ("completions", {"prompt": "   "}, "empty"),
    ("completions", {"echo": "yes"}, "echo"),
    ("completions", {"best_of": 2}, "best_of"),
    ("completions", {"prompt": [1, 2, 3, 4], "max_tokens": MAX_LEN - 3}, f"{MAX_LEN + 1} tokens"),
]


@pytest.mark.parametrize("endpoint,fields,needle", BAD, ids=[f"{e}-{next(iter(f))}-{i}" for i, (e, f, _) in
                                                             enumerate(BAD)])
def test_malformed_fields_get_a_400_with_an_openai_error_body(http, endpoint, fields, needle):
    body = {**(CHAT if endpoint == "chat" else COMPLETION), **fields}
    r = http.post(f"/v1/{'chat/' if endpoint == 'chat' else ''}completions", json=body)
    e = error_of(r)
    assert r.status_code == 400, (r.status_code, e)
    assert needle in e["message"] and e["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw", [b"", b"[]", b'"x"', b"{", b"\xff\xfe", b'{"model": "tiny-bd", "messages": '
                                 b'[{"role": "user", "content": "hi"}], "threshold": NaN}'])
def test_malformed_bodies_get_a_400(http, raw):
    r = http.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and error_of(r)["type"] == "invalid_request_error"


def test_the_server_still_answers_after_bad_requests(client):
    assert client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=3).usage.completion_tokens == 3


# ---- metrics --------------------------------------------------------------------------------------

def scrape(http) -> dict[tuple[str, tuple], float]:
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_count_the_requests_made(llm):
    app = create_app(llm, NAME, max_batch_size=BATCH, kv_cache_tokens=SLOT)  # a fresh registry
    with TestClient(app) as http:
        c = openai.OpenAI(base_url=str(http.base_url) + "/v1", api_key="unused", http_client=http, max_retries=0)
        usages = [c.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=n).usage for n in (5, 9)]
        usages.append(c.completions.create(model=NAME, prompt="Once upon a time", max_tokens=7).usage)
        chunks = list(c.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=11, stream=True,
                                                stream_options={"include_usage": True}))
        usages.append(chunks[-1].usage)
        for bad in ({"max_tokens": -1}, {"model": "nope"}, {"temperature": "x"}):
            http.post("/v1/chat/completions", json={**CHAT, **bad})
        http.get("/v1/models")
        m = scrape(http)
        stats = app.state.batcher.stats()

    def v(name, **labels):
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    assert v("fastdllm_requests_total", endpoint="/v1/chat/completions", status="200") == 3
    assert v("fastdllm_requests_total", endpoint="/v1/chat/completions", status="400") == 2
    assert v("fastdllm_requests_total", endpoint="/v1/chat/completions", status="404") == 1
    assert v("fastdllm_requests_total", endpoint="/v1/completions", status="200") == 1
    assert v("fastdllm_requests_total", endpoint="/v1/models", status="200") == 1
    assert v("fastdllm_prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert v("fastdllm_completion_tokens_total") == sum(u.completion_tokens for u in usages) > 0
    finished = sum(val for (name, _), val in m.items() if name == "fastdllm_sequences_finished_total")
    assert finished == 4 and v("fastdllm_request_duration_seconds_count") == 4
    assert v("fastdllm_time_to_first_token_seconds_count") == 4
    assert 0 < v("fastdllm_inter_token_latency_seconds_count") < v("fastdllm_completion_tokens_total")
    forwards, per_forward = v("fastdllm_forward_passes_total"), v("fastdllm_tokens_per_forward_count")
    assert forwards > 0 and per_forward >= forwards - 4  # a decode row per sequence per decode forward
    assert v("fastdllm_tokens_per_forward_sum") >= v("fastdllm_completion_tokens_total") - 4  # prefill gave 1 each
    assert v("fastdllm_queue_length") == v("fastdllm_running_sequences") == v("fastdllm_kv_cache_used_positions") == 0
    assert v("fastdllm_kv_cache_positions") == BATCH * SLOT and v("fastdllm_kv_cache_bytes") == stats["kv_cache_bytes"]
    assert not any(math.isnan(x) for x in m.values())
