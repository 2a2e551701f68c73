"""The accept rules (``fastdllm.engine.acceptance``): the naive rule on cases worked by hand, the
batched decision against it on random packed steps, the engine against the cache-free oracle, and
the rule and threshold a checkpoint's config.json sets."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings, strategies as st

import fastdllm
from fastdllm.engine.acceptance import RULES, accept
from fastdllm.engine.decision import StepDecision
from fastdllm.engine.options import DecodeOptions
from fastdllm.engine.sampling import greedy
from fastdllm.errors import InvalidRequestError, UnsupportedModelError
from tests.test_decision import decide_alone
from tests.test_engine import EOS, MASK, oracle, prompt_of, random_llm

CPU = torch.device("cpu")


def kept(conf, t, rule):
    return accept(torch.tensor(conf, dtype=torch.float64), t, rule).tolist()


def test_threshold_rule_keeps_every_confident_row_and_the_most_confident():
    assert kept([0.5, 0.95, 0.2, 0.91], 0.9, "threshold") == [False, True, False, True]
    assert kept([0.5, 0.7, 0.2], 0.9, "threshold") == [False, True, False]  # the maximum, not the leftmost


def test_prefix_rule_keeps_the_leftmost_and_the_confident_run_after_it():
    assert kept([0.5, 0.95, 0.99, 0.1], 0.9, "prefix") == [True, False, False, False]  # stops at the first
    assert kept([0.95, 0.99, 0.5, 0.97], 0.9, "prefix") == [True, True, False, False]  # never across a gap
    assert kept([0.2, 0.3], 0.9, "prefix") == [True, False]  # the leftmost, even below the threshold


def test_joint_rule_keeps_the_run_whose_product_exceeds_the_threshold():
    assert kept([0.99, 0.95, 0.99], 0.9, "joint") == [True, True, True]   # 0.931 > 0.9
    assert kept([0.99, 0.95, 0.95], 0.9, "joint") == [True, True, False]  # 0.893 < 0.9
    assert kept([0.95, 0.95], 0.9, "prefix") == [True, True]  # each is over: prefix keeps both
    assert kept([0.95, 0.95], 0.91, "joint") == [True, False]  # 0.9025 < 0.91


@pytest.mark.parametrize("rule", ["prefix", "joint"])
def test_ordered_rules_at_threshold_one_decode_left_to_right(rule):
    assert kept([0.3, 1.0, 0.99], 1.0, rule) == [True, False, False]
    assert kept([0.3, 1.0, 0.99], 1.0, "threshold") == [False, True, False]


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="accept rule"):
        accept(torch.ones(2), 0.9, "greedy")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.sampled_from([0.0, 0.3, 0.6, 0.9, 0.99, 1.0]),
                          st.sampled_from(RULES + ("default",))), min_size=1, max_size=7),
       st.integers(0, 2**31 - 1))
def test_batched_step_equals_the_naive_rule_per_segment(plans, seed):
    """Random packed steps (rows per plan, threshold, rule; empty and one-row plans among them): the
    step's batched accept equals deciding each segment with ``accept``, on confidences with ties."""
    V = 23
    g = torch.Generator().manual_seed(seed)
    R = sum(n for n, _, _ in plans)
    logits = torch.randn(R, V, generator=g, dtype=torch.float64) * 3
    if R:
        logits[::3] = logits[0].clone()  # repeated rows: ties between segments and inside them
    sampler = greedy(MASK % V)
    step = [(sampler, n, t) if r == "default" else (sampler, n, t, r) for n, t, r in plans]
    got = StepDecision(step, CPU).resolve(logits)
    a = 0
    for (n, t, r), rows in zip(plans, got):
        tokens, conf = sampler(logits[a:a + n]) if n else (torch.zeros(0), torch.zeros(0))
        want = [tok if ok else -1 for tok, ok in zip(tokens.tolist(), accept(conf, t, r if r != "default"
                                                                                  else "threshold").tolist())]
        if r in ("default", "threshold"):
            assert want == decide_alone(sampler, logits[a:a + n], t)
        assert rows == want, (n, t, r)
        a += n


@pytest.fixture(scope="module")
def rnd_llm():
    return random_llm()


@pytest.mark.parametrize("rule", ["prefix", "joint"])
@pytest.mark.parametrize("bs,sbs,thr,cache", [(32, 8, 0.9, False), (32, 8, 0.5, True), (16, 4, 0.7, True),
                                              (32, 32, 0.0, False), (8, 8, 1.0, True)])
@pytest.mark.parametrize("L", [1, 16, 33])
def test_engine_matches_oracle_with_ordered_rules(rnd_llm, rule, bs, sbs, thr, cache, L):
    prompt = prompt_of(L)
    kw = dict(block_size=bs, small_block_size=sbs, threshold=thr, use_block_cache=cache)
    res = rnd_llm.generate([prompt], max_new_tokens=70, stop_token_ids=[EOS], acceptance=rule, **kw)[0]
    assert res.token_ids == oracle(rnd_llm, prompt, max_new_tokens=70, stop_ids={EOS}, acceptance=rule, **kw)


def test_rules_share_a_batch_and_each_row_equals_its_solo_run(rnd_llm):
    prompts = [prompt_of(n, seed=3) for n in (5, 20, 40)]
    opts = [dict(acceptance="threshold", threshold=0.5), dict(acceptance="prefix", threshold=0.5),
            dict(acceptance="joint", threshold=0.3)]
    seqs = []
    for i, (p, o) in enumerate(zip(prompts, opts)):
        (seq,), _ = rnd_llm.prepare([p], max_new_tokens=50, stop_token_ids=[], **o)
        seqs.append(seq.with_request(index=i))
    list(rnd_llm.engine.run(seqs))
    for seq, p, o in zip(seqs, prompts, opts):
        solo = rnd_llm.generate([p], max_new_tokens=50, stop_token_ids=[], **o)[0]
        assert seq.output == solo.token_ids, o
        assert seq.nfe == solo.nfe


def test_ordered_rules_at_threshold_one_agree_one_token_a_forward(rnd_llm):
    """At threshold 1.0 the ordered rules both decode left to right, one token a forward."""
    p = prompt_of(9, seed=5)
    runs = {r: rnd_llm.generate([p], max_new_tokens=40, stop_token_ids=[], threshold=1.0, acceptance=r)[0]
            for r in ("prefix", "joint")}
    assert runs["prefix"].token_ids == runs["joint"].token_ids
    assert runs["prefix"].nfe == runs["joint"].nfe >= 40


def _with_config(src, dst, **keys):
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(keys)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_checkpoint_config_sets_the_default_rule_and_threshold(tmp_path):
    from tests.helpers import make_tiny_checkpoint

    base = make_tiny_checkpoint(tmp_path / "m", "fast_dllm", vocab=300, max_pos=256, confident=True)
    tuned = fastdllm.load(str(_with_config(base, tmp_path / "tuned", acceptance="joint", threshold=0.6)))
    plain = fastdllm.load(str(base))
    p = tuned.resolve(DecodeOptions())
    assert (p.acceptance, p.threshold) == ("joint", 0.6)
    p = plain.resolve(DecodeOptions())
    assert (p.acceptance, p.threshold) == ("threshold", 0.9)  # Fast-dLLM v2's, for every other checkpoint
    p = tuned.resolve(DecodeOptions(acceptance="threshold", threshold=0.8))  # a request overrides
    assert (p.acceptance, p.threshold) == ("threshold", 0.8)
    prompt = [5, 6, 7]
    assert (tuned.generate([prompt], max_new_tokens=30, stop_token_ids=[])[0].token_ids
            == plain.generate([prompt], max_new_tokens=30, stop_token_ids=[], acceptance="joint",
                              threshold=0.6)[0].token_ids)


@pytest.mark.parametrize("keys,match", [(dict(acceptance="best"), "acceptance must be one of"),
                                        (dict(acceptance=3), "acceptance must be a string"),
                                        (dict(threshold=1.5), "threshold must be a number in")])
def test_bad_decoding_keys_in_config_fail_at_load(tmp_path, keys, match):
    from tests.helpers import make_tiny_checkpoint

    base = make_tiny_checkpoint(tmp_path / "m", "fast_dllm", vocab=300, max_pos=256)
    with pytest.raises(UnsupportedModelError, match=match):
        fastdllm.load(str(_with_config(base, tmp_path / "bad", **keys)))


def test_unknown_rule_in_a_request_names_the_field(rnd_llm):
    with pytest.raises(InvalidRequestError, match="acceptance must be one of") as e:
        rnd_llm.generate([[1, 2]], max_new_tokens=4, acceptance="best")
    assert e.value.param == "acceptance"
