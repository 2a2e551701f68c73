"""Token-for-token conformance with the reference implementation's recorded outputs.

The vectors in tests/data/conformance were produced by the released Fast-dLLM v2 decoder in
float64 on a tiny random checkpoint; see that directory's README for the comparison rule.
"""

import json

import pytest

import fastdllm
from fastdllm.engine.reference import naive_block_diffusion
from fastdllm.engine.sampling import greedy
from tests.helpers import CONFORMANCE_DIR


def _cases(group):
    return json.loads((CONFORMANCE_DIR / "cases.json").read_text())[group]


def _case_id(c):
    n = len(c["prompts"]) if "prompts" in c else len(c["prompt"])
    return f"L{n}-t{c['threshold']}-sb{c['small_block_size']}-cache{int(c['use_block_cache'])}-stop{c['stop_token']}"


@pytest.fixture(scope="module")
def llm():
    return fastdllm.load(str(CONFORMANCE_DIR / "model"), dtype="float64")


def _options(c, max_new_tokens):
    return dict(max_new_tokens=max_new_tokens, threshold=c["threshold"], block_size=c["block_size"],
                small_block_size=c["small_block_size"], use_block_cache=c["use_block_cache"],
                stop_token_ids=[c["stop_token"]], mask_token_id=c["mask_id"])


def assert_conforms(out, expected, stop):
    if stop in expected:
        assert out == expected[:expected.index(stop) + 1]
    else:
        assert out[:len(expected)] == expected


@pytest.mark.parametrize("case", _cases("single") + _cases("stop"), ids=_case_id)
def test_single(llm, case):
    res = llm.generate([case["prompt"]], **_options(case, len(case["expected"]) + case["block_size"]))[0]
    assert_conforms(res.token_ids, case["expected"], case["stop_token"])
    if case["stop_token"] in case["expected"]:
        assert res.finish_reason == "stop"


@pytest.mark.parametrize("case", _cases("batch"), ids=_case_id)
def test_batch(llm, case):
    longest = max(len(e) for e in case["expected"])
    results = llm.generate(case["prompts"], **_options(case, longest + case["block_size"]))
    for res, expected in zip(results, case["expected"]):
        assert_conforms(res.token_ids, expected, case["stop_token"])


@pytest.mark.parametrize("use_block_cache", [False, True])
def test_single_cases_batched_together(llm, use_block_cache):
    """All single-prompt cases of one setting decoded as one batch give each row's own vector."""
    cases = [c for c in _cases("single") if c["threshold"] == 0.9 and c["small_block_size"] == 8
             and c["use_block_cache"] == use_block_cache]
    assert len(cases) >= 5
    longest = max(len(c["expected"]) for c in cases)
    results = llm.generate([c["prompt"] for c in cases], **_options(cases[0], longest + 32))
    for res, c in zip(results, cases):
        assert_conforms(res.token_ids, c["expected"], c["stop_token"])


@pytest.mark.parametrize("case", (_cases("single") + _cases("stop"))[::4], ids=_case_id)
def test_naive_oracle_conforms(llm, case):
    """The cache-free oracle the engine is tested against reproduces the vectors too."""
    out = naive_block_diffusion(
        llm.model, case["prompt"], max_new_tokens=len(case["expected"]), block_size=case["block_size"],
        small_block_size=case["small_block_size"], threshold=case["threshold"],
        use_block_cache=case["use_block_cache"], mask_id=case["mask_id"], stop_ids={case["stop_token"]},
        sampler=greedy(case["mask_id"]))
    assert_conforms(out, case["expected"], case["stop_token"])
