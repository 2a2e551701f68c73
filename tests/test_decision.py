"""The step's batched decision (sampling and the accept rule for all rows at once, on the device)
against deciding each plan alone, its tie rules, and one device-to-host transfer per step."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastdllm
from fastdllm.engine.decision import StepDecision
from fastdllm.engine.sampling import SamplingParams, argmax_excluding, greedy, greedy_pick, make_sampler
from tests.helpers import CONFORMANCE_DIR
from tests.test_engine import MASK, prompt_of, random_llm

CPU = torch.device("cpu")


def softmax_greedy(mask_token_id):
    """The greedy sampler as it was: a full softmax, the mask column set to -1, argmax, gather."""
    def sample(logits):
        probs = torch.softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)
        choice = probs.clone()
        if mask_token_id is not None:
            choice[:, mask_token_id] = -1.0
        tokens = choice.argmax(dim=-1)
        return tokens, probs.gather(-1, tokens[:, None])[:, 0]
    return sample


def decide_alone(sampler, logits, threshold):
    """One plan decided on its own, as the planners did: host lists, first maximum always accepted."""
    if logits.shape[0] == 0:
        return []
    tokens, conf = sampler(logits)
    tokens, conf = tokens.tolist(), conf.tolist()
    best = conf.index(max(conf))
    return [t if (c > threshold or j == best) else -1 for j, (t, c) in enumerate(zip(tokens, conf))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_batched_step_equals_deciding_each_plan_alone(dtype):
    V = 97
    g = torch.Generator().manual_seed(0)
    sampled = SamplingParams(temperature=0.8, top_p=0.9, top_k=30, seed=7)
    # (sampler factory, rows, threshold): diffusion sub-blocks, AR steps and block openers (one row),
    # a prefill chunk that reads nothing, seeded samplers (one shared by two plans), another mask id
    shared = lambda: "shared"  # noqa: E731
    plans = [
        (lambda: greedy(MASK % V), 8, 0.9), (lambda: greedy(MASK % V), 1, 1.0), (lambda: greedy(MASK % V), 0, 1.0),
        (shared, 5, 0.5), (lambda: greedy(MASK % V), 3, 0.0), (lambda: make_sampler(sampled, 4), 1, 1.0),
        (lambda: greedy(11), 6, 0.7), (shared, 2, 0.95), (lambda: greedy(None), 4, 0.9), (lambda: greedy(MASK % V), 7, 1.0),
    ]
    R = sum(n for _, n, _ in plans)
    logits = (torch.randn(R, V, generator=g, dtype=torch.float64) * 4).to(dtype)
    logits[3, MASK % V] = 50.0  # the mask token is the row's maximum: never picked
    logits[20:22] = logits[19]  # equal rows in one segment: the first one is the most confident

    def build():
        shared_sampler = make_sampler(SamplingParams(temperature=1.3, seed=3), MASK % V)
        return [(shared_sampler if f is shared else f(), n, t) for f, n, t in plans]

    batched = StepDecision(build(), CPU).resolve(logits)
    alone, a = [], 0
    for sampler, n, t in build():  # fresh generators with the same seeds, drawn in the same order
        alone.append(decide_alone(sampler, logits[a:a + n], t))
        a += n
    assert batched == alone
    assert all(any(p >= 0 for p in plan) for plan in batched if plan)  # every segment accepts one
    assert MASK % V not in batched[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_greedy_pick_equals_the_masked_softmax_argmax(dtype):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(500, 300, generator=g, dtype=torch.float64) * 6).to(dtype)
    for mask in (None, 0, 150, 299):
        logits[::7, 0 if mask is None else mask] = 40.0  # the mask token is the maximum of some rows
        tokens, conf = greedy_pick(logits, mask)
        old_tokens, old_conf = softmax_greedy(mask)(logits)
        assert torch.equal(tokens, old_tokens) and torch.equal(conf, old_conf)
        assert mask is None or not (tokens == mask).any()


def first_max_excluding(x: torch.Tensor, excluded: int | None) -> list[int]:
    """Per row, written plainly: the first NaN, else the first maximum, over the columns but ``excluded``."""
    out = []
    for row in x.float().tolist():
        cols = [j for j in range(len(row)) if j != excluded]
        nans = [j for j in cols if row[j] != row[j]]
        top = max(row[j] for j in cols)
        out.append(nans[0] if nans else next(j for j in cols if row[j] == top))
    return out


def test_ties_pick_the_first_maximum():
    x = torch.full((5, 10), -1.0, dtype=torch.float64)
    x[0, [3, 7]] = 2.0          # plain tie: the lower index
    x[1, [3, 7]] = 2.0          # the lower one is the mask token: the other
    x[2, [2, 9]] = 2.0          # a tie across the mask token's column
    x[3, 5] = 3.0
    x[3, [4, 6]] = 2.0          # the mask token is the maximum; the tie around it keeps the lower index
    x[4, 0] = 2.0
    x[4, 9] = 2.0               # ties at both ends
    tokens, _ = greedy_pick(x, 3)
    assert tokens[0] == 7 and tokens[1] == 7
    tokens, _ = greedy_pick(x, 5)
    assert tokens.tolist()[:4] == [3, 3, 2, 4]
    assert greedy_pick(x, 0)[0][4] == 9 and greedy_pick(x, 9)[0][4] == 0 and greedy_pick(x, None)[0][4] == 0
    # the argmax-only pick of AR steps agrees on all of it, and on random rows in every dtype
    for mask in (3, 5, 0, 9, None, 10, -1):
        assert argmax_excluding(x, mask).tolist() == first_max_excluding(x, mask), mask
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        r = torch.randint(0, 4, (64, 12), generator=g).to(dtype)  # many ties
        r[5, 7] = r[6, 0] = float("nan")
        r[7] = float("-inf")
        r[8, 1:] = float("-inf")  # only the excluded column 0 is finite
        for mask in (0, 6, 11, None):
            assert argmax_excluding(r, mask).tolist() == first_max_excluding(r, mask), (dtype, mask)
    # its cached column index, first made in inference mode, still serves autograd code
    with torch.inference_mode():
        assert argmax_excluding(torch.tensor([[1.0, 5.0, 2.0]]), 1).tolist() == [2]
    assert argmax_excluding(torch.tensor([[1.0, 5.0, 2.0]], requires_grad=True) * 2, 1).tolist() == [2]
    # equal confidences in a segment, none above the threshold: only the first is accepted
    rows = torch.zeros(6, 10, dtype=torch.float64)
    rows[:, 1] = 5.0
    picks = StepDecision([(greedy(3), 3, 1.0), (greedy(3), 3, 1.0)], CPU).resolve(rows)
    assert picks == [[1, -1, -1], [1, -1, -1]]  # per segment


class Fixed:
    """A sampler that returns given tokens and confidences (to pin the threshold comparison)."""

    def __init__(self, conf):
        self.conf = conf

    def __call__(self, logits):
        n = logits.shape[0]
        return torch.arange(n) + 10, self.conf[:n]


def test_threshold_compares_like_python_floats():
    # float32(0.1) > 0.1 as Python floats (it is 0.10000000149...), but not against float32(0.1)
    conf = torch.tensor([0.1, 0.05, 0.1], dtype=torch.float32)
    assert conf[0].item() > 0.1 and not bool(conf[0] > torch.tensor(0.1, dtype=torch.float32))
    picks = StepDecision([(Fixed(conf), 3, 0.1)], CPU).resolve(torch.zeros(3, 4))
    assert picks == [[10, -1, 12]]
    assert StepDecision([(Fixed(conf), 3, 0.2)], CPU).resolve(torch.zeros(3, 4)) == [[10, -1, -1]]


def test_nan_rows_still_accept_one():
    picks = StepDecision([(greedy(None), 3, 0.9)], CPU).resolve(torch.full((3, 5), float("nan")))
    assert sum(p >= 0 for p in picks[0]) == 1


# ---- one device-to-host transfer per step ----------------------------------------------------------

SYNCING_METHODS = ("tolist", "item", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__", "__array__")
SYNCING_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "equal", "is_nonzero",
               "repeat_interleave")


class SyncOps(TorchDispatchMode):
    """Records aten operators that read device data back on the host (or must, for their output shape)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in SYNCING_OPS:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def count_reads(monkeypatch):
    reads = []
    for name in SYNCING_METHODS:
        orig = getattr(torch.Tensor, name)

        def wrapper(self, *a, _orig=orig, _name=name, **k):
            reads.append(_name)
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return reads


def test_a_step_reads_the_device_once(count_reads):
    llm = random_llm(seed=2)
    requests = [
        (prompt_of(5), dict(max_new_tokens=40)),
        (prompt_of(40), dict(max_new_tokens=40, use_block_cache=True, threshold=0.5)),
        (prompt_of(9), dict(max_new_tokens=20, mode="ar")),
        (prompt_of(33), dict(max_new_tokens=30, temperature=0.9, top_p=0.9, top_k=50, seed=1)),
        (prompt_of(70), dict(max_new_tokens=30, block_size=16, small_block_size=4, mode="ar", temperature=0.7)),
        (prompt_of(100), dict(max_new_tokens=30)),  # prefilled in chunks, beside the others' decode steps
    ]
    seqs = []
    for i, (prompt, opts) in enumerate(requests):
        (seq,), params = llm.prepare([prompt], stop_token_ids=[], **opts)
        seqs.append(seq.with_request(index=i, params=dataclasses.replace(params, prefill_chunk=32)))
    steps = llm.engine.run(seqs)
    kinds = set()
    while True:
        count_reads.clear()
        with SyncOps() as ops:
            event = next(steps, None)
        if event is None:
            break
        kinds.add(event.kind)
        assert ops.seen == []
        assert count_reads == (["tolist"] if event.forward_tokens else []), event
    assert {"mixed", "decode"} <= kinds
    assert all(s.finished for s in seqs)


# ---- the confidence formula on the conformance vectors ----------------------------------------------

def test_conformance_steps_decide_as_each_sequence_alone(monkeypatch):
    """On the conformance cases, every step's batched decisions equal those of the per-sequence rule
    the engine had (a masked softmax, its argmax, host-side threshold and first maximum), and no
    confidence comes near a rounding error of its threshold. (Every case: 5548 decisions, the
    closest confidence 8.2e-6 from its threshold; every third single case here, to keep it short.)"""
    cases = json.loads((CONFORMANCE_DIR / "cases.json").read_text())
    llm = fastdllm.load(str(CONFORMANCE_DIR / "model"), dtype="float64")
    margins = []
    resolve = StepDecision.resolve

    def checked(self, logits):
        picks = resolve(self, logits)
        a = 0
        for plan, (sampler, n, threshold) in zip(picks, zip(self.samplers, self.sizes, self.thresholds)):
            rows = logits[a:a + n]
            assert plan == decide_alone(softmax_greedy(sampler.mask_token_id), rows, threshold)
            if n:
                conf = softmax_greedy(sampler.mask_token_id)(rows)[1]
                margins.append((conf - threshold).abs().min().item() if threshold < 1 else 1.0)
            a += n
        return picks

    monkeypatch.setattr(StepDecision, "resolve", checked)
    for case in cases["single"][::3] + cases["stop"] + cases["batch"]:
        prompts = case["prompts"] if "prompts" in case else [case["prompt"]]
        expected = case["expected"] if "prompts" in case else [case["expected"]]
        llm.generate(prompts, max_new_tokens=max(map(len, expected)) + case["block_size"], threshold=case["threshold"], block_size=case["block_size"],
                     small_block_size=case["small_block_size"], use_block_cache=case["use_block_cache"],
                     stop_token_ids=[case["stop_token"]], mask_token_id=case["mask_id"])
    print(f"{len(margins)} decisions, closest confidence to its threshold: {min(margins):.3g} away")
    assert len(margins) > 500 and min(margins) > 1e-12


def test_steps_reuse_a_decision_only_when_their_plans_read_alike(monkeypatch):
    """A step whose plans read like the last one's (same samplers, rows and thresholds) reuses its
    ``StepDecision``; any other step builds its own. Decoding is the same as with a fresh decision
    every step, for a mix of block diffusion, AR and seeded sampling."""
    from fastdllm.engine.engine import Engine

    llm = random_llm(seed=3)
    mixed = [
        (prompt_of(5), dict(max_new_tokens=40)),
        (prompt_of(40), dict(max_new_tokens=40, use_block_cache=True, threshold=0.5)),
        (prompt_of(9), dict(max_new_tokens=24, mode="ar")),
        (prompt_of(33), dict(max_new_tokens=30, temperature=0.9, top_k=50, seed=1)),
    ]
    steady = [(prompt_of(7), dict(max_new_tokens=30, mode="ar")), (prompt_of(12), dict(max_new_tokens=30, mode="ar"))]

    def decode(requests) -> tuple[list[list[int]], int]:
        seqs = []
        for i, (prompt, opts) in enumerate(requests):
            (seq,), params = llm.prepare([prompt], stop_token_ids=[], **opts)
            seqs.append(seq.with_request(index=i))
        steps = sum(1 for e in llm.engine.run(seqs) if e.forward_tokens)
        return [s.output for s in seqs], steps

    built = []
    init = StepDecision.__init__

    def counting(self, plans, device):
        built.append([(id(p[0]), *p[1:]) for p in plans])
        init(self, plans, device)

    monkeypatch.setattr(StepDecision, "__init__", counting)
    reused = {}
    for name, requests in (("mixed", mixed), ("steady", steady)):
        built.clear()
        reused[name], steps = decode(requests)
        assert all(a != b for a, b in zip(built, built[1:]))  # a new decision only when the plans changed
        if name == "steady":  # AR steps of the same two sequences read alike: a handful of decisions
            assert len(built) <= 3 < steps
    monkeypatch.setattr(Engine, "_decision", lambda self, work: StepDecision(
        [(s.planner.p.sampler, len(p.logit_rows), p.threshold) for s, p in work], self.runner.device))
    for name, requests in (("mixed", mixed), ("steady", steady)):
        assert decode(requests)[0] == reused[name]
