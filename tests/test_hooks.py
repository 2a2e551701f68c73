"""The engine's timing hooks see every forward and step of a generate call; the counters add up."""

import pytest
import torch

import fastdllm
from fastdllm.api import LLM
from fastdllm.engine.hooks import EngineHooks, PerfCounters
from fastdllm.kernels import native
from tests.helpers import make_tiny_checkpoint
from tests.test_engine import prompt_of, random_llm


class Recorder(EngineHooks):
    def __init__(self):
        self.steps = self.forwards = self.calls = self.attention = 0
        self.open_step = self.open_forward = False
        self.paths: set[str] = set()

    def step_start(self):
        assert not self.open_step
        self.open_step = True

    def step_end(self, event):
        assert self.open_step and not self.open_forward
        self.open_step = False
        self.steps += 1

    def forward_start(self, tokens):
        assert self.open_step and not self.open_forward and tokens > 0  # forwards run inside steps
        self.open_forward = True

    def forward_end(self, tokens, forwards, path):
        assert self.open_forward
        self.open_forward = False
        self.calls += 1
        self.forwards += forwards
        self.paths.add(path)

    def wrap_attention(self, attend):
        def counted(*args):
            self.attention += 1
            return attend(*args)
        return counted


def recorded(llm: LLM, prompts, **kw):
    rec = Recorder()
    llm.engine.hooks = rec
    llm.engine.counters.reset()
    try:
        results = llm.generate(prompts, **kw)
    finally:
        llm.engine.hooks = None  # back to the no-op hooks
    return rec, llm.engine.counters, results


@pytest.mark.parametrize("mode", ["diffusion", "ar"])
def test_hooks_see_every_forward_and_the_counters_add_up(mode):
    llm = random_llm(seed=3, dtype=torch.float32)
    llm.engine.steps_per_sync = 8  # AR: runs of forwards between reads, each forward seen
    rec, c, (r,) = recorded(llm, [prompt_of(40)], max_new_tokens=33, stop_token_ids=[], mode=mode)
    assert rec.forwards == c.forwards == r.stats.nfe  # every forward, as the API counts them
    assert rec.steps == c.steps and c.idle_steps == 0
    assert c.eager_forwards == c.forwards and c.stack_forwards == 0 and rec.paths == {"eager"}
    assert rec.attention == c.forwards * llm.config.num_hidden_layers  # each layer's attention, each forward
    # the prompt's whole blocks (diffusion: 32 of 40; the rest opens the first block) or all of it (AR)
    assert c.prefill_steps == 1 and c.prefill_tokens == (40 if mode == "ar" else 32) and c.mixed_steps == 0
    assert c.decode_steps == c.steps - 1 and c.reads == c.steps  # one device-to-host read a step
    assert c.forwards_per_step == pytest.approx(c.forwards / c.steps)
    if mode == "ar":
        assert c.decode_steps == 4 and c.forwards == 33 and c.decode_tokens == 32  # 32 tokens in 4 runs of 8
    assert isinstance(llm.engine.hooks, EngineHooks) and type(llm.engine.hooks) is EngineHooks
    c.reset()
    assert c == PerfCounters()


@pytest.mark.skipif(not native.available(), reason="fastdllm's native kernels could not be built here")
def test_hooks_see_the_native_stacks_forwards(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "q", "qwen2", hidden=64, inter=160)
    llm = fastdllm.load(str(ckpt), quantize="int8", steps_per_sync=8)
    assert llm.engine.backend.name == "native-stack"
    rec, c, (r,) = recorded(llm, [prompt_of(6, vocab=500)], max_new_tokens=33, stop_token_ids=[], mode="ar")
    assert rec.forwards == c.forwards == c.stack_forwards == r.stats.nfe == 33
    assert rec.calls == c.backend_calls == 5  # the prefill, then 4 greedy runs of 8 forwards in one call each
    assert rec.attention == 0 and rec.paths == {"native-stack"}  # attention runs inside the C++ stack
