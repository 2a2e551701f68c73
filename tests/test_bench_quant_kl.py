"""benchmarks/bench_quant_kl.py's helpers: the masked inputs it builds and its divergence."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import fastdllm

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_quant_kl", ROOT / "benchmarks" / "bench_quant_kl.py")
bkl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bkl)


@pytest.fixture(scope="module")
def llm():
    return fastdllm.load()


def test_masked_inputs_mask_one_block_of_the_solution(llm):
    from examples.word_problems import problems as P
    from examples.word_problems.build import encode

    mask, block = llm.mask_token_id, 32
    inputs = bkl.masked_inputs(llm.tokenizer, mask, block, 12, seed=5, rate=0.6)
    assert inputs == bkl.masked_inputs(llm.tokenizer, mask, block, 12, seed=5, rate=0.6)  # seeded
    for ids, p in zip(inputs, P.make_split(12, 5, held_out=False)):
        prompt, answer = encode(llm.tokenizer, p)
        assert len(ids) == len(prompt) + len(answer)
        assert ids[:len(prompt)] == prompt  # the prompt is never masked
        masked = [i for i, t in enumerate(ids) if t == mask]
        if masked:
            assert masked[0] // block == masked[-1] // block  # one block
        kept = [t for t in ids if t != mask]
        assert all(t == o for t, o in zip(ids, prompt + answer) if t != mask) and len(kept) >= len(prompt)


def test_divergence_of_a_model_from_itself_is_zero_and_from_int4_is_not(llm):
    inputs = bkl.masked_inputs(llm.tokenizer, llm.mask_token_id, 32, 8, seed=1, rate=0.6)
    same = bkl.divergence(llm.model, llm.model, inputs, llm.mask_token_id, 32)
    assert same["positions"] > 0 and same["kl"] == pytest.approx(0.0, abs=1e-7) and same["top1_agreement"] == 1.0
    q4 = fastdllm.load(quantize="int4")
    other = bkl.divergence(llm.model, q4.model, inputs, llm.mask_token_id, 32)
    assert other["positions"] == same["positions"] and other["kl"] > 1e-5
