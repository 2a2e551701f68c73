"""The scheduler's admission policy, and the engine stepping it: chunked prefill interleaved with
decode, head-of-line freedom, starvation bound, cancellation, KV compaction, a cache that never
grows. Every sequence must still decode exactly the tokens it decodes alone (or the oracle's)."""

from __future__ import annotations

import dataclasses

import pytest

from fastdllm.engine.params import DecodeParams
from fastdllm.engine.scheduler import QueueFull, Scheduler
from fastdllm.engine.sequence import Request, Sequence
from tests.test_engine import EOS, oracle, prompt_of, random_llm

AR = DecodeParams("ar", sampler=None, stop_token_ids=frozenset(), prefill_chunk=16)


def fake(index: int, prompt_len: int, new: int, params: DecodeParams = AR) -> Sequence:
    """A sequence for policy tests (AR: it needs exactly prompt + output KV positions)."""
    return Sequence(Request(index, [1] * prompt_len, new, prompt_len + new, params))


def admitted(sched: Scheduler) -> list[int]:
    return [s.index for s in sched.schedule().admitted]


# ---- the policy alone ----------------------------------------------------------------------------

def test_a_request_that_does_not_fit_does_not_block_the_ones_behind_it():
    sched = Scheduler(max_running=4, kv_tokens=100, patience=2)
    a, big, small = fake(0, 30, 30), fake(1, 40, 10), fake(2, 10, 20)
    sched.add([a])
    assert admitted(sched) == [0] and sched.kv.free == 40
    sched.add([big, small])
    assert admitted(sched) == [2]  # big (50) does not fit the 40 free positions; small (30) does
    assert big.overtaken == 1 and big.kv_base is None and small.kv_base is not None


def test_a_passed_over_request_gets_its_turn_after_patience():
    sched = Scheduler(max_running=8, kv_tokens=100, patience=2)
    a, big = fake(0, 50, 30), fake(1, 40, 20)
    sched.add([a])
    admitted(sched)
    smalls = [fake(i, 5, 5) for i in range(2, 6)]
    sched.add([big, *smalls])
    assert admitted(sched) == [2, 3]  # two overtakes allowed...
    assert big.overtaken == 2
    assert admitted(sched) == []  # ...then nothing goes before big, though 4 and 5 would fit
    sched.release([a])
    assert admitted(sched) == [1, 4, 5]  # big first, then the rest in order
    assert sched.stats()["waiting"] == 0


def test_cancelled_waiting_requests_are_dropped_before_any_prefill():
    sched = Scheduler(max_running=1, kv_tokens=100)
    a, b, c = fake(0, 10, 10), fake(1, 10, 10), fake(2, 10, 10)
    sched.add([a, b, c])
    assert admitted(sched) == [0]
    sched.cancel([b])
    step = sched.schedule()
    assert step.ended == [b] and b.finish_reason == "cancelled" and b.prefill_plans == [] and b.kv_base is None
    sched.cancel([a])  # a running one frees its span at once
    step = sched.schedule()
    assert step.ended == [a] and [s.index for s in step.admitted] == [2] and sched.kv.used == c.kv_need
    sched.cancel([a, b])  # already finished: nothing happens
    assert sched.schedule().ended == []


def test_exclusive_requests_run_alone():
    sched = Scheduler(max_running=8, kv_tokens=1000, patience=1)
    a = fake(0, 10, 10)
    group = [fake(1, 10, 10), fake(2, 10, 10)]
    later = fake(3, 10, 10)
    sched.add([a])
    admitted(sched)
    sched.add(group, exclusive=True)
    sched.add([later])
    assert admitted(sched) == [3]  # the group waits for a to finish; later may pass it once
    assert admitted(sched) == []
    sched.release([a, later])
    assert admitted(sched) == [1, 2]
    extra = fake(4, 1, 1)
    sched.add([extra])
    assert admitted(sched) == []  # nothing joins while the group runs
    sched.release(group)
    assert admitted(sched) == [4]


def test_kv_pool_is_compacted_when_free_positions_are_scattered():
    sched = Scheduler(max_running=8, kv_tokens=90)
    x, y, z = fake(0, 20, 10), fake(1, 20, 10), fake(2, 20, 10)
    sched.add([x, y, z])
    admitted(sched)
    assert [s.kv_base for s in (x, y, z)] == [0, 30, 60]
    sched.release([x, z])  # 60 free, but as two gaps of 30
    w = fake(3, 40, 20)
    sched.add([w])
    step = sched.schedule()
    assert step.admitted == [w] and step.moves == [(30, 0, 30)]
    assert (y.kv_base, w.kv_base) == (0, 30)


def test_prefill_budget_and_the_old_prefill_first_order():
    a, b, c = fake(0, 40, 5), fake(1, 8, 5), fake(2, 3, 5)  # chunks of 16: a has 3, b 1, c 1
    sched = Scheduler(max_running=4, kv_tokens=200, prefill_budget=24)
    sched.add([a, b, c])
    step = sched.schedule()
    assert step.prefill == [a, b] and step.decode == []  # 16 + 8 fit the budget, c's 3 would not
    a.slot.prefill_plans.pop(0)
    b.slot.prefill_plans.pop(0)  # b is decoding now
    step = sched.schedule()
    assert step.prefill == [a, c] and step.decode == [b]
    old = Scheduler(max_running=4, kv_tokens=200, interleave_prefill=False)
    old.add([fake(0, 40, 5), fake(1, 8, 5)])
    step = old.schedule()
    assert [s.index for s in step.prefill] == [0] and step.decode == []


def test_limits_and_bookkeeping():
    sched = Scheduler(max_running=2, kv_tokens=50, max_waiting=3)
    with pytest.raises(ValueError, match="needs 60 KV-cache positions"):
        sched.add([fake(0, 30, 30)])
    sched.add([fake(i, 5, 5) for i in range(3)])
    with pytest.raises(QueueFull):
        sched.add([fake(3, 5, 5)])
    empty = fake(4, 5, 0)
    sched.cancel([])
    step = sched.schedule()
    assert len(step.admitted) == 2
    sched.release(step.admitted)
    sched.add([empty])
    step = sched.schedule()
    assert step.ended == [empty] and empty.finish_reason == "length" and empty.kv_base is None
    sched.release(step.admitted)
    assert sched.stats() == {"waiting": 0, "running": 0, "ending": 0, "kv_spans": 0, "kv_used": 0, "kv_size": 50}
    assert not sched.has_work()


# ---- the engine stepping a scheduler ---------------------------------------------------------------

@pytest.fixture(scope="module")
def llm():
    return random_llm()


def prepared(llm, index: int, prompt: list[int], chunk: int = 512, **opts) -> Sequence:
    (seq,), params = llm.prepare([prompt], stop_token_ids=[], **opts)
    return seq.with_request(index=index, params=dataclasses.replace(params, prefill_chunk=chunk))


def run_until(llm, sched, cond, events):
    while not cond():
        events.append(llm.engine.step(sched))


@pytest.mark.parametrize("interleave", [True, False])
def test_long_prompt_mid_stream_is_prefilled_in_chunks_between_decode_steps(llm, interleave):
    running = prepared(llm, 0, prompt_of(9), max_new_tokens=120)
    long_prompt = prompt_of(200, seed=1)
    late = prepared(llm, 1, long_prompt, chunk=32, max_new_tokens=40)
    sched = Scheduler(max_running=4, kv_tokens=1024, prefill_budget=32, interleave_prefill=interleave)
    sched.add([running])
    events = []
    run_until(llm, sched, lambda: len(running.output) >= 8, events)
    sched.add([late])
    mid = len(events)
    run_until(llm, sched, lambda: not sched.has_work(), events)

    prefill_steps = [e for e in events[mid:] if any(r.sequence is late and r.phase == "prefill" for r in e.rows)]
    assert len(prefill_steps) == 200 // 32  # six 32-token chunks; the 8-token tail opens the first block
    running_decoded = [any(r.sequence is running and r.phase == "decode" for r in e.rows) for e in prefill_steps]
    if interleave:
        assert all(running_decoded) and all(e.kind == "mixed" for e in prefill_steps)
        assert all(e.forward_tokens > 32 for e in prefill_steps)  # one packed forward: chunk + decode rows
    else:
        assert not any(running_decoded) and all(e.kind == "prefill" for e in prefill_steps)
    solo = llm.generate([prompt_of(9)], max_new_tokens=120, stop_token_ids=[])[0]
    assert running.output == solo.token_ids
    assert late.output == oracle(llm, long_prompt, max_new_tokens=40, block_size=32, small_block_size=8,
                                 threshold=0.9, use_block_cache=False, stop_ids=set())
    assert late.nfe == llm.generate([long_prompt], max_new_tokens=40, stop_token_ids=[])[0].nfe  # prefill: one
    assert sched.stats()["kv_spans"] == 0


def assert_solo(llm, seqs, specs):
    for seq, (prompt, n) in zip(seqs, specs):
        assert seq.output == llm.generate([prompt], max_new_tokens=n, stop_token_ids=[])[0].token_ids


def test_moving_a_running_sequence_in_the_kv_pool_does_not_change_its_tokens(llm):
    specs = [(prompt_of(20, seed=2), 10), (prompt_of(30, seed=3), 90), (prompt_of(20, seed=4), 10),
             (prompt_of(60, seed=5), 60)]
    seqs = [prepared(llm, i, p, max_new_tokens=n) for i, (p, n) in enumerate(specs)]
    x, y, z, big = seqs
    sched = Scheduler(max_running=8, kv_tokens=256)
    sched.add([x, y, z])  # 32 + 128 + 32 positions (prompt + output rounded up to blocks of 32)
    run_until(llm, sched, lambda: x.finished and z.finished, [])
    assert not y.finished and y.kv_base == 32  # free: [0, 32) and [160, 256), 128 in all
    sched.add([big])  # needs 128: y slides to 0, big takes [128, 256)
    llm.engine.step(sched)
    assert (y.kv_base, big.kv_base) == (0, 128)
    run_until(llm, sched, lambda: not sched.has_work(), [])
    assert_solo(llm, seqs, specs)


def test_big_request_is_passed_over_then_served_before_later_ones_with_exact_answers(llm):
    specs = [(prompt_of(20, seed=2), 10), (prompt_of(30, seed=3), 90), (prompt_of(20, seed=4), 10),
             (prompt_of(150, seed=5), 60), (prompt_of(5, seed=6), 20), (prompt_of(6, seed=7), 20)]
    seqs = [prepared(llm, i, p, max_new_tokens=n) for i, (p, n) in enumerate(specs)]
    x, y, z, big, s1, s2 = seqs
    sched = Scheduler(max_running=8, kv_tokens=320, patience=1)
    sched.add([x, y, z])  # 32 + 128 + 32 of 320 positions
    llm.engine.step(sched)
    sched.add([big, s1, s2])  # big needs 224 > 128 free: s1 goes first, then the queue waits for big
    llm.engine.step(sched)
    assert big.kv_base is None and s1.kv_base is not None and big.overtaken == 1
    assert s2.kv_base is None and not s2.output  # it would fit, but it is not its turn
    while big.kv_base is None:  # s2 never starts before big
        llm.engine.step(sched)
        assert s2.kv_base is None or big.kv_base is not None
    run_until(llm, sched, lambda: not sched.has_work(), [])
    assert_solo(llm, seqs, specs)
    assert sched.stats()["kv_used"] == 0 and sched.stats()["kv_spans"] == 0


def test_the_kv_cache_never_grows_past_the_pool(llm):
    sched = Scheduler(max_running=3, kv_tokens=256)
    seqs = [prepared(llm, i, prompt_of(10 + 7 * i, seed=i), max_new_tokens=40 + 5 * i) for i in range(8)]
    sched.add(seqs)
    engine = type(llm.engine)(llm.model, 3)
    while sched.has_work():
        engine.step(sched)
        assert engine.runner.cache.k.shape[3] == 256
    assert all(s.finished for s in seqs)
    assert engine.runner.cache.nbytes == 2 * 2 * 1 * 2 * 256 * 12 * 8  # layers, 1 slot, kv heads, pool, dim, f64


def test_library_run_is_unchanged_for_eos_and_zero_tokens(llm):
    res = llm.generate([prompt_of(12), prompt_of(40)], max_new_tokens=0)
    assert [r.token_ids for r in res] == [[], []] and all(r.finish_reason == "length" for r in res)
    events = list(llm.stream([prompt_of(12)], max_new_tokens=30, stop_token_ids=[EOS]))
    assert events[-1].rows[-1].finished and events[-1].sequences[0].finished
