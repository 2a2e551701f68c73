"""The engine against the naive cache-free oracle, token for token, and its batching rules."""

from pathlib import Path

import pytest
import torch

import fastdllm
from fastdllm.api import LLM
from fastdllm.model.config import ModelConfig
from fastdllm.loading import Checkpoint
from fastdllm.model import Transformer
from fastdllm.engine.reference import naive_autoregressive, naive_block_diffusion
from fastdllm.engine.sampling import SamplingParams, make_sampler
from tests.helpers import CONFORMANCE_DIR

CONFORMANCE = CONFORMANCE_DIR / "model"
VOCAB, MASK, EOS = 384, 383, 382


def random_llm(model_type="Fast_dLLM_Qwen", seed=0, lm_scale=6.0, dtype=torch.float64, max_pos=512) -> LLM:
    """A random tiny model built in memory; lm_scale makes it confident enough to fill several tokens a step."""
    cfg = ModelConfig.from_dict({
        "model_type": model_type, "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 10000.0,
        "max_position_embeddings": max_pos, "eos_token_id": EOS, "tie_word_embeddings": model_type == "llama",
        **({"bd_size": 32, "mask_token_id": MASK} if model_type == "Fast_dLLM_Qwen" else {}),
    })
    torch.manual_seed(seed)
    model = Transformer(cfg).to(dtype).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(lm_scale)
        if model_type == "Fast_dLLM_Qwen":
            model.lm_head.weight[MASK].zero_()
    return LLM(Checkpoint(model, cfg, None, Path("."), {}))


@pytest.fixture(scope="module")
def conf_llm():
    return fastdllm.load(str(CONFORMANCE), dtype="float64", mask_token_id=2047)


@pytest.fixture(scope="module")
def rnd_llm():
    return random_llm()


def prompt_of(n, seed=0, vocab=VOCAB - 3):
    g = torch.Generator().manual_seed(seed + 1000 * n)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def oracle(llm, prompt, **kw):
    sampler = make_sampler(SamplingParams(kw.pop("temperature", 0.0), kw.pop("top_p", 1.0), kw.pop("top_k", 0),
                                          kw.pop("seed", None)), llm.mask_token_id)
    return naive_block_diffusion(llm.model, prompt, mask_id=llm.mask_token_id, sampler=sampler, **kw)


SETTINGS = [  # block_size, small_block_size, threshold, use_block_cache
    (32, 8, 0.9, False), (32, 8, 0.9, True), (32, 8, 0.5, True), (16, 4, 0.7, False), (16, 4, 0.7, True),
    (8, 8, 1.0, False), (32, 32, 0.0, True), (32, 16, 0.95, True),
]


@pytest.mark.parametrize("bs,sbs,thr,cache", SETTINGS)
@pytest.mark.parametrize("L", [1, 7, 16, 32, 33, 50])
def test_engine_matches_oracle(rnd_llm, bs, sbs, thr, cache, L):
    prompt = prompt_of(L)
    kw = dict(block_size=bs, small_block_size=sbs, threshold=thr, use_block_cache=cache)
    res = rnd_llm.generate([prompt], max_new_tokens=70, stop_token_ids=[EOS], **kw)[0]
    expected = oracle(rnd_llm, prompt, max_new_tokens=70, stop_ids={EOS}, **kw)
    assert res.token_ids == expected
    assert res.finish_reason == ("stop" if EOS in expected else "length")


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("L", [5, 40, 64])
def test_engine_matches_oracle_on_conformance_model_with_other_stops(conf_llm, cache, L):
    prompt = prompt_of(L, vocab=2040)
    first = conf_llm.generate([prompt], max_new_tokens=80, stop_token_ids=[], use_block_cache=cache)[0].token_ids
    stop = {first[len(first) // 2]}  # a token the model does produce: decoding must end on it
    res = conf_llm.generate([prompt], max_new_tokens=80, stop_token_ids=sorted(stop), use_block_cache=cache)[0]
    expected = oracle(conf_llm, prompt, max_new_tokens=80, block_size=32, small_block_size=8, threshold=0.9,
                      use_block_cache=cache, stop_ids=stop)
    assert res.token_ids == expected
    assert res.token_ids[-1] in stop and res.finish_reason == "stop"


@pytest.mark.parametrize("cache", [False, True])
def test_sampling_matches_oracle_with_same_seed(rnd_llm, cache):
    prompt = prompt_of(21)
    kw = dict(block_size=16, small_block_size=8, threshold=0.6, use_block_cache=cache)
    samp = dict(temperature=0.9, top_p=0.9, top_k=40, seed=1234)
    res = rnd_llm.generate([prompt], max_new_tokens=48, stop_token_ids=[], **kw, **samp)[0]
    assert res.token_ids == oracle(rnd_llm, prompt, max_new_tokens=48, stop_ids=set(), **kw, **samp)
    again = rnd_llm.generate([prompt], max_new_tokens=48, stop_token_ids=[], **kw, **samp)[0]
    assert again.token_ids == res.token_ids  # the seed makes a call reproducible
    other = rnd_llm.generate([prompt], max_new_tokens=48, stop_token_ids=[], **kw, **{**samp, "seed": 99})[0]
    assert other.token_ids != res.token_ids


@pytest.mark.parametrize("model_type", ["qwen2", "llama", "Fast_dLLM_Qwen"])
def test_ar_mode_matches_naive_ar(model_type):
    llm = random_llm(model_type, seed=3, lm_scale=1.0)
    for L in (1, 9, 40):
        prompt = prompt_of(L)
        res = llm.generate([prompt], max_new_tokens=25, stop_token_ids=[EOS], mode="ar")[0]
        sampler = make_sampler(SamplingParams(), llm.mask_token_id)
        assert res.token_ids == naive_autoregressive(llm.model, prompt, max_new_tokens=25, stop_ids={EOS},
                                                     sampler=sampler)
        assert res.stats.nfe == len(res.token_ids)  # one forward per token, prefill included
    if model_type != "Fast_dLLM_Qwen":
        assert llm.generate([prompt_of(3)], max_new_tokens=2)[0].stats.nfe == 2  # AR is the default here


@pytest.mark.parametrize("mode,cache", [("diffusion", False), ("diffusion", True), ("ar", False)])
def test_batch_invariance(conf_llm, mode, cache):
    prompts = [prompt_of(n, vocab=2040) for n in (3, 31, 32, 45, 64, 90, 12)]
    kw = dict(max_new_tokens=60, use_block_cache=cache, mode=mode, stop_token_ids=[2046])
    alone = [conf_llm.generate([p], **kw)[0].token_ids for p in prompts]
    together = [r.token_ids for r in conf_llm.generate(prompts, **kw)]
    assert together == alone
    reversed_ = [r.token_ids for r in conf_llm.generate(prompts[::-1], **kw)][::-1]
    assert reversed_ == alone


def test_slots_are_reused_when_the_batch_is_smaller_than_the_request(conf_llm):
    prompts = [prompt_of(n, vocab=2040) for n in (5, 70, 33, 8, 41)]
    small = LLM(conf_llm.checkpoint, mask_token_id=2047, max_batch_size=2)
    kw = dict(max_new_tokens=50, stop_token_ids=[2046])
    assert [r.token_ids for r in small.generate(prompts, **kw)] == [r.token_ids for r in conf_llm.generate(prompts, **kw)]


@pytest.mark.parametrize("cache", [False, True])
def test_max_new_tokens_is_exact_and_a_prefix(conf_llm, cache):
    prompt = prompt_of(37, vocab=2040)
    full = conf_llm.generate([prompt], max_new_tokens=100, stop_token_ids=[], use_block_cache=cache)[0]
    assert len(full.token_ids) == 100 and full.finish_reason == "length"
    for n in (1, 2, 9, 27, 28, 59, 64):
        res = conf_llm.generate([prompt], max_new_tokens=n, stop_token_ids=[], use_block_cache=cache)[0]
        assert res.token_ids == full.token_ids[:n]
        assert res.finish_reason == "length"
    assert conf_llm.generate([prompt], max_new_tokens=0)[0].token_ids == []


def test_stopping_early_saves_forwards(conf_llm):
    prompt = prompt_of(37, vocab=2040)
    short = conf_llm.generate([prompt], max_new_tokens=4, stop_token_ids=[])[0]
    long = conf_llm.generate([prompt], max_new_tokens=96, stop_token_ids=[])[0]
    assert short.stats.nfe < long.stats.nfe


def test_mask_token_is_never_emitted():
    llm = random_llm(seed=5)
    head = torch.nn.Linear(48, VOCAB, bias=True).to(torch.float64)
    with torch.no_grad():  # the mask token becomes the most likely output everywhere
        head.weight.copy_(llm.model.lm_head.weight)
        head.bias.zero_()
        head.bias[MASK] = 1e3
    llm.model.lm_head = head
    for mode in ("diffusion", "ar"):
        out = llm.generate([prompt_of(10)], max_new_tokens=40, stop_token_ids=[], mode=mode)[0].token_ids
        assert len(out) == 40 and MASK not in out


def test_stream_reports_every_forward_and_ends_in_the_result(conf_llm):
    prompt = prompt_of(45, vocab=2040)
    kw = dict(max_new_tokens=64, stop_token_ids=[], use_block_cache=True)
    events = list(conf_llm.stream([prompt], **kw))
    res = conf_llm.generate([prompt], **kw)[0]
    seq = events[-1].sequences[0]
    assert seq.output == res.token_ids
    assert len(events) == res.stats.nfe  # prefill event + one per decode forward
    seen = set()
    for ev in events:
        for row in ev.rows:
            assert not (set(row.new_positions) & seen)  # a position is decoded once
            seen |= set(row.new_positions)
            assert all(row.block_start <= p < row.block_start + 32 or p == row.block_start for p in row.new_positions)
    assert events[-1].rows[0].finished


def test_sequences_with_different_parameters_share_a_run(tmp_path):
    """Per-sequence decoding parameters in one Engine.run: every row equals its solo generation."""
    import fastdllm
    from tests.helpers import make_tiny_checkpoint

    d = make_tiny_checkpoint(tmp_path / "m", "fast_dllm", vocab=300, max_pos=256, confident=True)
    llm = fastdllm.load(str(d), max_batch_size=3)  # fewer slots than sequences: admission mid-run
    requests = [
        ([5, 6, 7], dict(max_new_tokens=40, threshold=0.9, stop_token_ids=[])),
        ([8, 9] * 20, dict(max_new_tokens=30, threshold=0.5, use_block_cache=True, stop_token_ids=[])),
        ([3, 4, 5, 6], dict(max_new_tokens=25, mode="ar", stop_token_ids=[])),
        (list(range(10, 45)), dict(max_new_tokens=33, block_size=16, small_block_size=4, stop_token_ids=[])),
        ([11, 12], dict(max_new_tokens=20, temperature=0.9, top_k=20, seed=3, stop_token_ids=[])),
    ]
    seqs = []
    for i, (prompt, opts) in enumerate(requests):
        (seq,), params = llm.prepare([prompt], **opts)
        seqs.append(seq.with_request(index=i))
    list(llm.engine.run(seqs))
    for seq, (prompt, opts) in zip(seqs, requests):
        solo = llm.generate([prompt], **opts)[0]
        assert seq.output == solo.token_ids, opts
        assert seq.nfe == solo.nfe
