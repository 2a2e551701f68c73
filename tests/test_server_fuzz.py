"""The fuzz suite: the server against its own OpenAPI schema (schemathesis) and any JSON value in any
field of a request (hypothesis), through a real uvicorn server with the guards on.

Checks: no 5xx; every status, content type and JSON body as ``/openapi.json`` documents it;
data the schema forbids is refused with a 4xx; routes behind the API key refuse requests without
it. The property tests: a 4xx with an OpenAI error body or a valid answer, never a 5xx, and never
a hang (the client gives up after ``TIMEOUT`` seconds; the server has no time limit of its own
here, which would hide one). Bounded in examples (``FUZZ_EXAMPLES``) so the suite stays in
the CI budget: about a minute on 2 cores.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import checks as sc

import fastdllm
from fastdllm.models import DEFAULT_MODEL
from fastdllm.serve import create_app
from fastdllm.serve.schema import ChatCompletion, Completion
from tests.server_helpers import live

NAME = "wp"
KEY = "sk-fuzz-9d2e"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT = 60.0
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))  # per operation; raise it for a longer hunt


@pytest.fixture(scope="module")
def server():
    llm = fastdllm.load(DEFAULT_MODEL, max_batch_size=4)
    # a short context keeps the answers that pass validation quick (the shipped model holds 512)
    app = create_app(llm, NAME, max_batch_size=4, max_model_len=64, default_max_tokens=8, api_key=KEY)
    with live(app) as url:
        yield app, url


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(server[1] + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")
CHECKS = [sc.not_a_server_error, sc.status_code_conformance, sc.content_type_conformance,
          sc.response_schema_conformance, sc.negative_data_rejection, sc.ignored_auth]


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_server_keeps_to_its_schema(case):
    case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=TIMEOUT)


# ---- any JSON value in any field ---------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
    | st.floats() | st.text(max_size=20) | st.sampled_from(["", NAME, "user", "text", "ar", "diffusion"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=8)
CHAT = {"model": NAME, "messages": [{"role": "user", "content": "Tom has 3 apples. How many?"}], "max_tokens": 4}
COMPLETION = {"model": NAME, "prompt": "Tom has 3 apples.", "max_tokens": 4}
REQUEST_FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
                  "stream", "stream_options", "stop", "seed", "user", "frequency_penalty", "presence_penalty",
                  "logprobs", "logit_bias", "echo", "suffix", "best_of", "tools", "tool_choice", "response_format",
                  "threshold", "block_size", "small_block_size", "use_block_cache", "mode", "top_k", "ignore_eos",
                  "surprise"]
NESTED = [("messages", 0, "content"), ("messages", 0, "role"), ("messages", 0, "name"), ("messages", 0, "x"),
          ("messages", 0), ("stream_options", "include_usage")]


def put(body: dict, path: tuple, value) -> dict:
    body = json.loads(json.dumps(body))
    if path[0] == "stream_options":
        body["stream"] = True
        body["stream_options"] = {}
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


def check_answer(r: httpx.Response, stream: bool, kind) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code != 200:
        error = r.json()["error"]
        assert 400 <= r.status_code < 500 and set(error) == {"message", "type", "param", "code"}, r.text[:500]
        return
    if not stream:
        kind.model_validate(r.json())
        return
    events = [line.removeprefix("data: ") for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]", r.text[-500:]
    for event in events[:-1]:
        assert "error" not in json.loads(event), event


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions", "denoise"])
def test_any_json_value_in_any_field_gets_a_4xx_or_an_answer(server, endpoint):
    app, url = server
    base = COMPLETION if endpoint == "completions" else CHAT
    kind = Completion if endpoint == "completions" else ChatCompletion
    paths = [(f,) for f in REQUEST_FIELDS] + (NESTED if base is CHAT else [NESTED[-1]])

    with httpx.Client(base_url=url, headers=AUTH, timeout=TIMEOUT) as http:
        @settings(max_examples=EXAMPLES * 4, deadline=None, suppress_health_check=list(HealthCheck))
        @given(path=st.sampled_from(paths), value=JSON)
        def one(path, value):
            body = put(base, path, value)
            # allow_nan: a client may send NaN and Infinity, which are not JSON
            r = http.post(f"/v1/{endpoint}", content=json.dumps(body, allow_nan=True),
                          headers={"Content-Type": "application/json"})
            stream = endpoint == "denoise" or body.get("stream") is True
            check_answer(r, stream, kind)

        one()
    stats = app.state.batcher.stats()
    assert stats["waiting"] == 0  # nothing left queued



def test_the_fuzzing_reached_answers_and_refusals_on_every_route(server):
    """Runs last: what the fuzz tests above sent, counted by the server itself (``/metrics``)."""
    seen: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(httpx.get(server[1] + "/metrics").text):
        for sample in family.samples:
            if sample.name == "fastdllm_requests_total":
                seen.setdefault(sample.labels["endpoint"], set()).add(sample.labels["status"])
    for route in ("/v1/chat/completions", "/v1/completions", "/v1/denoise"):
        assert {"200", "400"} <= seen.get(route, set()), seen
    assert not any(status.startswith("5") for statuses in seen.values() for status in statuses), seen
