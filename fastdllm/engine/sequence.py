"""One request's decoding, split by who writes what.

A ``Sequence`` is read by many (the engine, the scheduler, the planners, the detokenizer, the
server) but each part of it has one writer, so that nobody has to guess who changed a field:

- ``Request``: what was asked (prompt, length, ``DecodeParams``). Frozen: built once by
  ``LLM.prepare`` (the server's limits build a shortened copy before queueing, ``with_request``).
- ``DecodeState``: the block being decoded; written by the step planner only (``diffusion.py``).
- ``Slot``: the sequence's place in the scheduler (its planner, KV span, prompt chunks still to
  feed, queue bookkeeping); made by ``Scheduler.add`` and written by the scheduler and
  ``KVSpace`` only.
- The ``Sequence`` itself: the outcome (committed ``output``, finish, ``nfe``, times), written by
  the engine; its text state (``detok``); a cancellation flag; and the caller's handle
  (``owner``, the server's job).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .params import DecodeParams

if TYPE_CHECKING:
    from .detokenizer import IncrementalDetokenizer


@dataclass
class ForwardPlan:
    """What one sequence feeds to the next packed forward, and which outputs it reads."""

    tokens: list[int]
    write_pos: int                 # absolute position of tokens[0]
    kv_end: int                    # attend to positions [0, kv_end)
    logit_rows: list[int]          # rows of ``tokens`` whose logits are read
    mask: str = "full"             # "full", "causal" or "block_causal"
    kind: str = "decode"           # "prefill", "decode" or "commit"
    block_size: int = 0            # for the block-causal mask
    threshold: float = 1.0         # read rows more confident than this are accepted; the most confident one always is
    acceptance: str = "threshold"  # the accept rule (``acceptance.py``)
    targets: list[int] = field(default_factory=list)  # block indices the read logits decide


@dataclass(frozen=True)
class Request:
    """What was asked; never changed once built."""

    index: int                     # position of the request in the caller's list
    prompt: list[int]
    max_new_tokens: int
    limit: int                     # absolute position bound of the output (the last block may decode past it)
    params: DecodeParams


@dataclass
class DecodeState:
    """The block-diffusion planner's books (AR decoding keeps none here)."""

    block_start: int = 0
    block: list[int] = field(default_factory=list)
    gen_from: int = 0              # first generated index inside the block
    emitted: int = 0               # block indices < emitted are in ``output`` (or prompt)
    block_cache_fresh: bool = False


class Planner(Protocol):
    """A step planner (``DiffusionPlanner`` or ``AutoregressivePlanner``)."""

    p: DecodeParams

    def prefill_plans(self, seq: Sequence) -> list[ForwardPlan]: ...
    def after_prefill(self, seq: Sequence, picks: list[int] | None) -> list[int]: ...
    def plan(self, seq: Sequence) -> ForwardPlan: ...
    def apply(self, seq: Sequence, plan: ForwardPlan, picks: list[int]) -> list[int]: ...
    def take_ready(self, seq: Sequence) -> list[int]: ...


@dataclass(eq=False)
class Slot:
    """The scheduler's state of a queued or running sequence."""

    planner: Planner               # step planner for the request's params
    kv_need: int                   # KV positions it reserves while running (its capacity)
    kv_base: int | None = None     # start of its span of the KV pool while running
    prefill_plans: list[ForwardPlan] = field(default_factory=list)  # prompt chunks not yet fed
    group: object | None = None    # shared by the sequences of a request that must run alone
    overtaken: int = 0             # later sequences admitted while this one waited


@dataclass(eq=False)  # compared by identity: the scheduler finds sequences in its queues
class Sequence:
    request: Request
    detok: IncrementalDetokenizer | None = None  # text state (stop strings, streaming)
    output: list[int] = field(default_factory=list)   # committed generated ids
    finished: bool = False
    finish_reason: str | None = None
    nfe: int = 0
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    state: DecodeState = field(default_factory=DecodeState)
    slot: Slot | None = None       # set by ``Scheduler.add``
    cancel_requested: bool = False
    owner: object | None = None    # the caller's handle (the server's job), for routing updates

    def with_request(self, **changes) -> Sequence:
        """A fresh copy of this not yet queued sequence, its request changed (``dataclasses.replace``)."""
        if self.slot is not None:
            raise ValueError(f"sequence {self.index} is queued already: its request is fixed")
        return Sequence(dataclasses.replace(self.request, **changes), self.detok)

    # ---- the request, read-only ----------------------------------------------------------------
    index = property(lambda self: self.request.index)
    prompt = property(lambda self: self.request.prompt)
    max_new_tokens = property(lambda self: self.request.max_new_tokens)
    limit = property(lambda self: self.request.limit)
    params = property(lambda self: self.request.params)

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt)

    # ---- the planner's block, read-only ------------------------------------------------------------
    block_start = property(lambda self: self.state.block_start)
    block = property(lambda self: self.state.block)
    gen_from = property(lambda self: self.state.gen_from)

    # ---- the scheduler's slot, read-only (None / empty / 0 outside the scheduler) -------------------------
    planner = property(lambda self: self.slot.planner if self.slot else None)
    kv_need = property(lambda self: self.slot.kv_need if self.slot else 0)
    kv_base = property(lambda self: self.slot.kv_base if self.slot else None)
    prefill_plans = property(lambda self: self.slot.prefill_plans if self.slot else [])
    overtaken = property(lambda self: self.slot.overtaken if self.slot else 0)

    def finish(self, reason: str) -> None:
        self.finished = True
        self.finish_reason = reason
        self.ended = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started
