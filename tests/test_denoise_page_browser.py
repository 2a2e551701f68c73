"""The denoising page in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium, nothing downloaded) against a real server (uvicorn on 127.0.0.1).

A prompt is submitted through the page; while it decodes, the DOM must show a block with masked
cells beside decoded ones; at the end the page's answer and stats must be what the OpenAI API
returns for the same request (same threshold, greedy), and the page must have loaded nothing
from anywhere but the server. Skipped when Chromium, its driver or selenium are not installed.
"""

from __future__ import annotations

import time

import httpx
import pytest

import fastdllm
from examples.denoise_page import browser
from fastdllm.serve import create_app
from tests.helpers import make_tiny_word_checkpoint

if browser.missing():
    pytest.skip(browser.missing(), allow_module_level=True)

NAME = "tiny-word"
QUESTION = "Lily has 12 apples and buys 30 more. How many apples does she have?"
LIVE_BLOCK = "#blocks .block-row.live"


def set_control(driver, element_id: str, value) -> None:
    driver.execute_script(
        "const e = document.getElementById(arguments[0]);"
        "if (e.type === 'checkbox') e.checked = arguments[1]; else e.value = arguments[1];"
        "e.dispatchEvent(new Event('input'));", element_id, value)


def count(driver, selector: str) -> int:
    return driver.execute_script("return document.querySelectorAll(arguments[0]).length", selector)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    llm = fastdllm.load(str(make_tiny_word_checkpoint(tmp_path_factory.mktemp("page") / "m")))
    app = create_app(llm, NAME)
    with browser.serve(app) as base:
        app.state.base = base
        yield app


@pytest.fixture(scope="module")
def chromium():
    with browser.chromium(1280, 900) as driver:
        yield driver


def test_the_page_shows_the_denoising_and_the_api_answer(served, chromium):
    base, driver = served.state.base, chromium
    driver.get(base + "/")
    browser.wait_for(driver, "document.body.dataset.state === 'idle'")
    assert driver.find_element("id", "model").text == NAME
    assert count(driver, "#examples .example") >= 1  # the checkpoint's held-out problems

    set_control(driver, "prompt", QUESTION)
    set_control(driver, "threshold", 0.7)
    set_control(driver, "max-tokens", 40)
    set_control(driver, "pace", 120)  # slow motion: a tiny model decodes faster than a poll
    driver.find_element("id", "run").click()

    # an intermediate state: the current block has masked cells beside decoded ones
    browser.wait_for(driver, f"document.querySelectorAll('{LIVE_BLOCK} .cell.masked').length > 0 && "
                             f"document.querySelectorAll('{LIVE_BLOCK} .cell.decoded').length > 0", timeout=300)
    assert count(driver, f"{LIVE_BLOCK} .sub.active") == 1  # the sub-block being decoded is outlined
    assert count(driver, f"{LIVE_BLOCK} .cell") == 32

    browser.wait_for(driver, "document.body.dataset.state === 'done'", timeout=300)
    answer = driver.execute_script("return document.getElementById('answer').textContent")
    stats = {k: driver.find_element("id", f"s-{k}").text for k in ("tokens", "nfe", "tpf", "status")}
    rows = count(driver, "#blocks .block-row")
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")

    api = httpx.post(base + "/v1/chat/completions", timeout=120, json={
        "model": NAME, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 40, "threshold": 0.7,
        "temperature": 0}).json()
    assert answer == api["choices"][0]["message"]["content"]
    assert int(stats["tokens"]) == api["usage"]["completion_tokens"]
    assert int(stats["nfe"]) == api["fastdllm"]["nfe"] > 10  # several forwards: the denoising was visible
    assert float(stats["tpf"]) == pytest.approx(api["fastdllm"]["tpf"], abs=0.005)
    assert stats["status"] == api["choices"][0]["finish_reason"]
    first, end = api["usage"]["prompt_tokens"], api["usage"]["prompt_tokens"] + api["usage"]["completion_tokens"]
    assert rows == (end - 1) // 32 - first // 32 + 1  # a row per block, finished ones kept
    assert resources and all(url.startswith(base + "/") for url in resources)


def test_bad_input_shows_the_servers_error(served, chromium):
    driver = chromium
    driver.get(served.state.base + "/")
    browser.wait_for(driver, "document.body.dataset.state === 'idle'")
    set_control(driver, "prompt", QUESTION * 30)  # longer than the model's context
    driver.find_element("id", "run").click()
    browser.wait_for(driver, "document.body.dataset.state === 'error'", timeout=120)
    message = driver.find_element("id", "error").text
    assert "context holds 512" in message and not driver.find_element("id", "stop").is_enabled()


def test_stop_ends_the_stream_and_the_server_lets_go(served, chromium):
    driver = chromium
    driver.get(served.state.base + "/")
    browser.wait_for(driver, "document.body.dataset.state === 'idle'")
    set_control(driver, "prompt", QUESTION)
    set_control(driver, "threshold", 1.0)  # one cell per forward: a long decoding
    set_control(driver, "max-tokens", 400)
    set_control(driver, "pace", 300)
    driver.find_element("id", "run").click()
    browser.wait_for(driver, f"document.querySelectorAll('{LIVE_BLOCK} .cell.masked').length > 0", timeout=300)
    driver.find_element("id", "stop").click()
    assert driver.execute_script("return document.body.dataset.state") == "stopped"
    shown = driver.find_element("id", "s-nfe").text
    time.sleep(1.0)
    assert driver.find_element("id", "s-nfe").text == shown  # nothing more is played
    assert not driver.find_element("id", "stop").is_enabled() and driver.find_element("id", "run").is_enabled()
    deadline = time.monotonic() + 60  # the job was cancelled, or had ended: nothing is held
    while served.state.batcher.stats()["open_jobs"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.state.batcher.stats()["open_jobs"] == 0


def test_the_page_passes_the_key_it_was_given(served, chromium):
    """A server started with an API key: the page opened as /#key=KEY decodes; opened without it, it
    says that it needs the key."""
    key = "sk-page-test-4f1c"
    app = create_app(served.state.llm, NAME, api_key=key)
    driver = chromium
    with browser.serve(app) as base:
        driver.get(base + "/")
        browser.wait_for(driver, "document.body.dataset.state === 'error'")
        assert "API key" in driver.find_element("id", "error").text
        driver.get(base + "/#key=" + key)
        driver.refresh()  # a new fragment alone does not reload the page
        browser.wait_for(driver, "document.body.dataset.state === 'idle'")
        set_control(driver, "prompt", QUESTION)
        set_control(driver, "max-tokens", 16)
        driver.find_element("id", "run").click()
        browser.wait_for(driver, "document.body.dataset.state === 'done'", timeout=300)
        assert int(driver.find_element("id", "s-tokens").text) > 0
