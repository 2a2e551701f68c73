"""AR forwards run back to back (``Engine.steps_per_sync``): the same tokens as one read per forward.

Every test decodes with several ``steps_per_sync`` and compares with the naive cache-free AR
path or with one forward per step (``steps_per_sync=1``): tokens, finish reasons and forward
counts, alone and batched, with stop tokens, stop strings, length limits, seeded sampling,
mixed AR / block-diffusion runs and the quantised C++ layer stack.
"""

import re

import pytest

import fastdllm
from fastdllm.api import LLM
from fastdllm.engine.engine import Engine
from fastdllm.engine.reference import naive_autoregressive
from fastdllm.engine.sampling import SamplingParams, make_sampler
from tests.helpers import make_tiny_checkpoint, make_tiny_word_checkpoint
from tests.test_engine import EOS, prompt_of, random_llm

STEPS = (1, 2, 5, 8, 64)


def with_steps(llm: LLM, steps: int, max_batch_size: int = 8) -> LLM:
    return LLM(llm.checkpoint, mask_token_id=llm._mask_token_id, max_batch_size=max_batch_size,
               steps_per_sync=steps)


@pytest.fixture(scope="module")
def qwen():
    return random_llm("qwen2", seed=3, lm_scale=1.0)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("model_type", ["qwen2", "llama", "Fast_dLLM_Qwen"])
def test_runs_match_naive_ar(model_type, steps):
    llm = with_steps(random_llm(model_type, seed=3, lm_scale=1.0), steps)
    for L, n in ((1, 25), (9, 1), (9, 2), (40, 17), (12, 64)):
        prompt = prompt_of(L)
        res = llm.generate([prompt], max_new_tokens=n, stop_token_ids=[], mode="ar")[0]
        expected = naive_autoregressive(llm.model, prompt, max_new_tokens=n, stop_ids=set(),
                                        sampler=make_sampler(SamplingParams(), llm.mask_token_id))
        assert res.token_ids == expected and len(expected) == n
        assert res.finish_reason == "length"
        assert res.stats.nfe == n  # one forward per token, as without runs


@pytest.mark.parametrize("steps", STEPS[1:])
def test_a_stop_token_inside_a_run_ends_the_sequence_there(qwen, steps):
    prompt = prompt_of(11)
    free = with_steps(qwen, 1).generate([prompt], max_new_tokens=40, stop_token_ids=[], mode="ar")[0].token_ids
    for at in (0, 3, 6, 13):  # the stop lands at different places inside a run
        stop = free[at]
        first = free.index(stop)
        one = with_steps(qwen, 1).generate([prompt], max_new_tokens=40, stop_token_ids=[stop], mode="ar")[0]
        run = with_steps(qwen, steps).generate([prompt], max_new_tokens=40, stop_token_ids=[stop], mode="ar")[0]
        assert run.token_ids == one.token_ids == free[:first + 1]
        assert run.finish_reason == one.finish_reason == "stop"
        assert run.stats.nfe == one.stats.nfe == first + 1


def test_batched_runs_equal_single_decoding(qwen):
    prompts = [prompt_of(n) for n in (3, 31, 45, 12, 7)]
    lengths = [40, 3, 17, 64, 9]
    stops = [[], [EOS], [], [prompt_of(12)[0]], []]
    one = with_steps(qwen, 1)
    alone = [one.generate([p], max_new_tokens=n, stop_token_ids=s, mode="ar")[0] for p, n, s in zip(prompts, lengths,
                                                                                                      stops)]
    for steps, batch in ((8, 8), (5, 2)):  # batch 2: sequences wait, so some steps run one forward
        llm = with_steps(qwen, steps, max_batch_size=batch)
        seqs = []
        for i, (p, n, s) in enumerate(zip(prompts, lengths, stops)):
            (seq,), params = llm.prepare([p], max_new_tokens=n, stop_token_ids=s, mode="ar")
            seqs.append(seq.with_request(index=i))
        events = list(llm.engine.run(seqs))
        for seq, ref in zip(seqs, alone):
            assert seq.output == ref.token_ids and seq.finish_reason == ref.finish_reason
            assert seq.nfe == ref.stats.nfe
        assert max(e.forwards for e in events) == steps


def test_events_carry_the_run_and_every_position_once(qwen):
    llm = with_steps(qwen, 4)
    events = list(llm.stream([prompt_of(20)], max_new_tokens=30, stop_token_ids=[], mode="ar"))
    rows = [r for e in events for r in e.rows]
    positions = [p for r in rows for p in r.new_positions]
    assert positions == list(range(20, 50))  # in order, each once
    assert [len(r.new_tokens) for r in rows] == [1] + [4] * 7 + [1]  # prefill, 7 runs of 4, the last one alone
    assert [e.forwards for e in events] == [1] + [4] * 7 + [1]
    assert events[-1].rows[0].finished


def test_seeded_sampling_is_unchanged(qwen):
    kw = dict(max_new_tokens=30, stop_token_ids=[], mode="ar", temperature=0.8, top_k=50, seed=11)
    for prompts in ([prompt_of(9)], [prompt_of(9), prompt_of(14), prompt_of(5)]):  # several: one shared generator
        one = [r.token_ids for r in with_steps(qwen, 1).generate(prompts, **kw)]
        run = [r.token_ids for r in with_steps(qwen, 8).generate(prompts, **kw)]
        assert run == one


def test_block_diffusion_beside_ar_reads_after_every_forward(tmp_path):
    d = make_tiny_checkpoint(tmp_path / "m", "fast_dllm", vocab=300, max_pos=256, confident=True)
    llm = fastdllm.load(str(d), steps_per_sync=8)
    requests = [([5, 6, 7], dict(max_new_tokens=20, threshold=0.9, stop_token_ids=[])),
                ([3, 4, 5, 6], dict(max_new_tokens=60, mode="ar", stop_token_ids=[]))]
    seqs = []
    for i, (prompt, opts) in enumerate(requests):
        (seq,), params = llm.prepare([prompt], **opts)
        seqs.append(seq.with_request(index=i))
    events = list(llm.engine.run(seqs))
    assert any(e.forwards > 1 for e in events)  # the AR sequence runs alone once the other has ended
    for seq, (prompt, opts) in zip(seqs, requests):
        solo = fastdllm.load(str(d), steps_per_sync=1).generate([prompt], **opts)[0]
        assert seq.output == solo.token_ids and seq.nfe == solo.nfe
    runs = [e for e in events if e.forwards > 1]
    assert all(r.sequence.params.mode == "ar" for e in runs for r in e.rows)


def test_stop_strings_inside_a_run(tmp_path):
    d = make_tiny_word_checkpoint(tmp_path / "w")
    one, run = fastdllm.load(str(d), steps_per_sync=1), fastdllm.load(str(d), steps_per_sync=8)
    prompt = "Ava has 12 apples. She gets 5 more. How many apples does she have now?"
    free = one.generate([prompt], max_new_tokens=48, mode="ar", stop_token_ids=[])[0]
    words = re.findall(r"[A-Za-z]{3,}", free.text)  # a random model's text: plain letters make clean stops
    assert len(words) >= 2
    for stop in (words[0][:3], words[-1][-3:]):
        a = one.generate([prompt], max_new_tokens=48, mode="ar", stop=[stop])[0]
        b = run.generate([prompt], max_new_tokens=48, mode="ar", stop=[stop])[0]
        assert (b.text, b.token_ids, b.finish_reason, b.stats.nfe) == (a.text, a.token_ids, a.finish_reason,
                                                                       a.stats.nfe)
        assert stop not in b.text and b.finish_reason == "stop"


@pytest.fixture(scope="module")
def quant_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("q") / "q", "qwen2", hidden=64, inter=160)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantised_greedy_runs_in_one_call(quant_dir, mode, monkeypatch):
    """Greedy runs of a quantised model go through ``QuantStack.greedy_run`` (embedding, layers,
    projection and pick in C++): the same tokens as the stack's one forward per step."""
    from fastdllm.engine.backend import NativeStackBackend

    prompts = [prompt_of(n, vocab=500) for n in (6, 30)]
    kw = dict(max_new_tokens=33, stop_token_ids=[], mode="ar")
    one = fastdllm.load(str(quant_dir), quantize=mode, steps_per_sync=1)
    run = fastdllm.load(str(quant_dir), quantize=mode, steps_per_sync=8)
    expected = [r.token_ids for r in one.generate(prompts, **kw)]
    assert run.engine.runner.backend.name == "native-stack"
    calls = {"forward": 0, "greedy_run": 0}
    for name in calls:
        orig = getattr(NativeStackBackend, name)

        def counted(self, *a, _orig=orig, _name=name, **k):
            out = _orig(self, *a, **k)
            calls[_name] += out is not None
            return out
        monkeypatch.setattr(NativeStackBackend, name, counted)
    assert [r.token_ids for r in run.generate(prompts, **kw)] == expected
    assert calls == {"forward": 1, "greedy_run": 4}  # both prompts in one prefill; 32 tokens = 4 runs of 8


def test_quantised_greedy_runs_never_pick_the_excluded_token(quant_dir):
    kw = dict(max_new_tokens=40, stop_token_ids=[], mode="ar")
    prompt = prompt_of(9, vocab=500)
    free = fastdllm.load(str(quant_dir), quantize="int8").generate([prompt], **kw)[0].token_ids
    banned = max(set(free[1:]), key=free[1:].count)  # the model's favourite token after the prefill's
    one = fastdllm.load(str(quant_dir), quantize="int8", mask_token_id=banned, steps_per_sync=1)
    run = fastdllm.load(str(quant_dir), quantize="int8", mask_token_id=banned, steps_per_sync=8)
    a, b = one.generate([prompt], **kw)[0].token_ids, run.generate([prompt], **kw)[0].token_ids
    assert a == b and banned not in b and len(b) == 40


def test_trace_records_each_forward(qwen):
    from fastdllm.visualize import record

    llm = with_steps(qwen, 8)
    _, trace = record(llm, prompt_of(10), max_new_tokens=12, stop_token_ids=[], mode="ar", chat=False)
    assert trace.step_of == list(range(1, 13))  # token i came from forward i + 1, not from the run's end
    assert llm.engine.steps_per_sync == 8


def test_bad_steps_per_sync():
    with pytest.raises(ValueError, match="steps_per_sync"):
        Engine(random_llm().model, steps_per_sync=0)



def test_cli_flag(tmp_path, capsys):
    import json

    from fastdllm.cli.main import main

    d = make_tiny_word_checkpoint(tmp_path / "w")
    argv = ["generate", "--model", str(d), "--ar", "--max-new-tokens", "20", "--json", "Ava has 3 apples."]
    outs = []
    for k in ("1", "8"):
        assert main(argv + ["--steps-per-sync", k]) == 0
        data = json.loads(capsys.readouterr().out)
        outs.append((data["text"], data["token_ids"], data["stats"]["nfe"]))
    assert outs[0] == outs[1] and len(outs[0][1]) == outs[0][2]
    assert main(argv + ["--steps-per-sync", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
