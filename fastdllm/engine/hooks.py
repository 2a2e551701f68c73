"""Timing hooks and performance counters of the engine.

A profiler or a metrics exporter needs to know when each engine step and each model forward
starts and ends, without patching the engine or the model. The engine's forward backend holds
one ``EngineHooks`` (no-op by default: every method does nothing) and calls it around each
backend forward and each engine step, on the engine's thread; a subclass overrides what it needs
(``benchmarks/profile_engine.py`` times steps, forwards and attention with it). The calls sit at
the backend, the one place every forward passes, so they see forwards of every backend,
including the native layer stack where no Python runs per layer.

``PerfCounters`` is the always-on tally next to them (a few integer additions per step):
steps, tokens and wall time by step kind, forwards per step, native-stack vs eager forwards,
device-to-host reads. ``reset()`` starts a new tally.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..model.attention import AttentionFn


class EngineHooks:
    """Called around engine steps and backend forwards; the base class does nothing."""

    def step_start(self) -> None:
        """An engine step begins (scheduling, planning, the forward(s), the decision)."""

    def step_end(self, event) -> None:
        """The step ended with ``event`` (a ``StepEvent``: its kind, forward tokens, forwards)."""

    def forward_start(self, tokens: int) -> None:
        """A backend call begins: one packed forward of ``tokens`` query tokens, or a greedy run."""

    def forward_end(self, tokens: int, forwards: int, path: str) -> None:
        """The backend call ended: ``forwards`` model forwards (more than 1 for a greedy run in one
        call) on ``path`` ("eager", "compiled" or "native-stack")."""

    def wrap_attention(self, attend: AttentionFn) -> AttentionFn:
        """The attention callable an eager forward's layers call (wrap it to time it); as is by default.
        The native stack attends inside C++ and calls no Python attention."""
        return attend


@dataclass
class PerfCounters:
    """Tallies since the last ``reset``: steps by kind with their tokens and wall seconds, forwards."""

    prefill_steps: int = 0
    prefill_tokens: int = 0      # query tokens of prefill steps' forwards (prompt chunks)
    prefill_seconds: float = 0.0
    decode_steps: int = 0
    decode_tokens: int = 0       # query tokens of decode steps' forwards (per forward of an AR run: one a sequence)
    decode_seconds: float = 0.0
    mixed_steps: int = 0         # steps whose forward packs prefill chunks and decode work together
    mixed_tokens: int = 0
    mixed_seconds: float = 0.0
    idle_steps: int = 0          # steps with no forward (only admissions, cancellations, ends)
    forwards: int = 0            # model forwards (a greedy run of k forwards in one call counts k)
    backend_calls: int = 0       # calls into the backend (that run counts 1)
    stack_forwards: int = 0      # forwards on the native layer stack
    eager_forwards: int = 0      # forwards on PyTorch (eager or compiled regions)
    reads: int = 0               # device-to-host reads of the engine (one a step by design)

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)

    @property
    def steps(self) -> int:
        return self.prefill_steps + self.decode_steps + self.mixed_steps + self.idle_steps

    @property
    def forwards_per_step(self) -> float:
        busy = self.steps - self.idle_steps
        return self.forwards / busy if busy else 0.0

    def count_step(self, kind: str, tokens: int, seconds: float) -> None:
        """A step of ``kind`` ("prefill", "decode", "mixed", "idle") that ran forwards of ``tokens``
        query tokens in all, in ``seconds``."""
        if kind == "idle":
            self.idle_steps += 1
            return
        setattr(self, f"{kind}_steps", getattr(self, f"{kind}_steps") + 1)
        setattr(self, f"{kind}_tokens", getattr(self, f"{kind}_tokens") + tokens)
        setattr(self, f"{kind}_seconds", getattr(self, f"{kind}_seconds") + seconds)

    def count_forward(self, forwards: int, path: str) -> None:
        self.backend_calls += 1
        self.forwards += forwards
        if path == "native-stack":
            self.stack_forwards += forwards
        else:
            self.eager_forwards += forwards
