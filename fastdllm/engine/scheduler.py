"""The admission policy: which sequences run in the next forward pass, and which wait.

``Engine.step`` asks ``Scheduler.schedule`` what to do, once per forward pass. The scheduler
owns the waiting queue, the running list and the KV pool (``KVSpace``), and applies these rules:

- First come, first served, without head-of-line blocking: the queue is scanned in order and
  every sequence whose KV need fits the free positions (and a free batch place) is admitted;
  one that does not fit is passed over, and the ones behind it that fit go first.
- No starvation: each time a later sequence goes first, a passed-over one counts it
  (``overtaken``); once it has been overtaken ``patience`` times, nothing behind it is admitted
  until it fits (the running sequences finish and free their positions).
- A request that must run alone (``add(..., exclusive=True)``: seeded sampling over several
  prompts, whose draws must come in the order they would alone) starts only when nothing else
  runs, and nothing else starts while it runs.
- Cancelled sequences (``cancel``, from any thread) leave at the next step: waiting ones
  before any prefill, running ones freeing their KV span at once. A sequence with nothing to
  generate (``max_new_tokens`` 0) ends at the next step without KV or a forward.
- Chunked prefill: an admitted sequence feeds its prompt in chunks (``DecodeParams.
  prefill_chunk``), at most ``prefill_budget`` prompt tokens per step over all prefilling
  sequences (at least one chunk), in the same packed forward as the running sequences' decode
  steps, so a long prompt never stalls the streams already running. ``interleave_prefill=
  False`` restores prefill-before-decode (a new prompt's chunks run alone, back to back).

``add`` gives each sequence its ``Slot`` (``sequence.py``): its step planner, its KV need and span,
its prompt chunks still to feed and its queue bookkeeping; this module and ``KVSpace`` are the
only ones that write it. A sequence's request (prompt, length, parameters) is never changed here.
A finished or cancelled sequence leaves every structure here at the step it ends (``stats``
reports their sizes). ``add``, ``cancel``, ``wait`` and ``stats`` are thread-safe; ``schedule``
and ``release`` belong to the thread that runs the engine.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from .autoregressive import AutoregressivePlanner
from .diffusion import DiffusionPlanner
from .kv_space import KVSpace, Move
from .params import DecodeParams
from .sequence import Sequence, Slot


class QueueFull(Exception):
    """The waiting queue holds ``max_waiting`` sequences already."""


def planner_class(params: DecodeParams) -> type[DiffusionPlanner] | type[AutoregressivePlanner]:
    return DiffusionPlanner if params.mode == "diffusion" else AutoregressivePlanner


def kv_need(seq: Sequence) -> int:
    """KV positions ``seq`` reserves while it runs (its planner's capacity for its request)."""
    return planner_class(seq.params).capacity(seq.params, seq.limit)


@dataclass
class ScheduledStep:
    """What the next forward pass does."""

    number: int                                             # steps scheduled so far, this one included
    ended: list[Sequence] = field(default_factory=list)     # finished without a forward (cancelled, empty)
    admitted: list[Sequence] = field(default_factory=list)  # started this step (prefill plans made)
    prefill: list[Sequence] = field(default_factory=list)   # feed their next prompt chunk
    decode: list[Sequence] = field(default_factory=list)    # run one decode plan each
    moves: list[Move] = field(default_factory=list)         # KV spans to move before the forward


class Scheduler:
    def __init__(self, max_running: int, kv_tokens: int, prefill_budget: int = 512,
                 interleave_prefill: bool = True, patience: int | None = None, max_waiting: int | None = None):
        if max_running <= 0 or kv_tokens < 0 or prefill_budget <= 0:
            raise ValueError("max_running and prefill_budget must be positive, kv_tokens non-negative")
        self.max_running = max_running
        self.prefill_budget = prefill_budget
        self.interleave_prefill = interleave_prefill
        self.patience = max_running if patience is None else patience
        self.max_waiting = max_waiting
        self.kv = KVSpace(kv_tokens)
        self.running: list[Sequence] = []  # admission order
        self._waiting: deque[Sequence] = deque()
        self._ending: list[Sequence] = []  # cancelled or empty sequences the engine thread has not ended yet
        self._cv = threading.Condition()
        self.steps = 0

    # ---- any thread ---------------------------------------------------------------------------
    def add(self, seqs: list[Sequence], exclusive: bool = False) -> None:
        """Queue ``seqs``, giving each its ``Slot``. ValueError if one can never fit the KV pool (or
        is queued already); QueueFull."""
        needs = []
        for seq in seqs:
            if seq.slot is not None:
                raise ValueError(f"sequence {seq.index} is queued already")
            needs.append(kv_need(seq))
            if needs[-1] > self.kv.size and seq.max_new_tokens > 0:
                raise ValueError(f"sequence {seq.index} needs {needs[-1]} KV-cache positions; "
                                 f"the cache holds {self.kv.size}")
        group = object() if exclusive and len(seqs) > 1 else None
        with self._cv:
            if self.max_waiting is not None and len(self._waiting) + len(seqs) > self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} sequences are waiting already (at most {self.max_waiting})")
            for seq, need in zip(seqs, needs):
                seq.slot = Slot(planner_class(seq.params)(seq.params), need, group=group)
                if seq.max_new_tokens <= 0:  # nothing to generate: ends at the next step, no KV, no forward
                    self._ending.append(seq)
                else:
                    self._waiting.append(seq)
            self._cv.notify_all()

    def cancel(self, seqs: list[Sequence]) -> None:
        """Finish ``seqs`` (reason "cancelled") at the next step; already finished ones are left alone."""
        with self._cv:
            for seq in seqs:
                if not seq.finished and not seq.cancel_requested:
                    seq.cancel_requested = True
                    self._ending.append(seq)
            self._cv.notify_all()

    def has_work(self) -> bool:
        with self._cv:
            return self._has_work()

    def _has_work(self) -> bool:
        return bool(self._waiting or self.running or self._ending)

    def settled(self) -> bool:
        """Nothing waits to start or end: the next steps would run the same sequences."""
        with self._cv:
            return not (self._waiting or self._ending)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until there is something to schedule (or ``timeout``); True if there is."""
        with self._cv:
            return self._cv.wait_for(self._has_work, timeout)

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def stats(self) -> dict[str, int]:
        """Sizes of every structure (all zero when idle)."""
        with self._cv:
            return {"waiting": len(self._waiting), "running": len(self.running), "ending": len(self._ending),
                    "kv_spans": len(self.kv), "kv_used": self.kv.used, "kv_size": self.kv.size}

    def drain(self) -> list[Sequence]:
        """Remove every sequence (after an engine failure); returns them, unfinished ones finished."""
        with self._cv:
            seqs = list(self.running) + list(self._waiting) + [s for s in self._ending
                                                               if s not in self.running and s not in self._waiting]
            for seq in self.running:
                self.kv.release(seq)
            self.running.clear()
            self._waiting.clear()
            self._ending.clear()
        for seq in seqs:
            seq.slot.prefill_plans = []
            if not seq.finished:
                seq.finish("error")
        return seqs

    # ---- the engine's thread ----------------------------------------------------------------------
    def schedule(self) -> ScheduledStep:
        with self._cv:
            self.steps += 1
            step = ScheduledStep(self.steps)
            if self._ending:
                self._end_early(step)
            if self._waiting:
                self._admit(step)
        step.prefill, step.decode = self._split()
        return step

    def release(self, seqs: list[Sequence]) -> None:
        """Take finished sequences out of the batch and give their KV span back."""
        if not seqs:
            return
        with self._cv:
            gone = {id(s) for s in seqs}
            self.running = [s for s in self.running if id(s) not in gone]
            for seq in seqs:
                self.kv.release(seq)
                seq.slot.prefill_plans = []

    def _end_early(self, step: ScheduledStep) -> None:
        for seq in self._ending:
            if seq.finished:
                continue
            if seq.kv_base is not None:
                self.running = [s for s in self.running if s is not seq]
                self.kv.release(seq)
            elif seq in self._waiting:
                self._waiting.remove(seq)  # never prefilled
            seq.slot.prefill_plans = []
            seq.finish("cancelled" if seq.cancel_requested else "length")
            step.ended.append(seq)
        self._ending.clear()

    def _admit(self, step: ScheduledStep) -> None:
        passed_over: list[Sequence] = []
        blocked_groups: set[int] = set()  # a group's sequences start in order
        for seq in list(self._waiting):
            if len(self.running) >= self.max_running:
                break
            slot = seq.slot
            if slot.group is not None and id(slot.group) in blocked_groups:
                continue
            moves = self.kv.allocate(seq) if self._may_join(seq) else None
            if moves is None:
                if slot.group is not None:
                    blocked_groups.add(id(slot.group))
                if slot.overtaken >= self.patience:
                    break  # its turn has come: the queue waits for it
                passed_over.append(seq)
                continue
            self._waiting.remove(seq)
            self.running.append(seq)
            slot.prefill_plans = slot.planner.prefill_plans(seq)
            step.moves += moves
            step.admitted.append(seq)
            for other in passed_over:
                other.slot.overtaken += 1
            if any(other.slot.overtaken >= self.patience for other in passed_over):
                break  # a passed-over sequence has waited its fair share: it is next

    def _may_join(self, seq: Sequence) -> bool:
        """Exclusive groups run alone."""
        group = seq.slot.group
        if group is None:
            return all(s.slot.group is None for s in self.running)
        return all(s.slot.group is group for s in self.running)

    def _split(self) -> tuple[list[Sequence], list[Sequence]]:
        prefilling = [s for s in self.running if s.prefill_plans]
        if not prefilling:  # steady decoding
            return [], list(self.running)
        decoding = [s for s in self.running if not s.prefill_plans]
        if not self.interleave_prefill:
            return prefilling[:1], []
        chosen, budget = [], self.prefill_budget
        for seq in prefilling:
            n = len(seq.prefill_plans[0].tokens)
            if chosen and n > budget:
                break
            chosen.append(seq)
            budget -= n
        return chosen, decoding
