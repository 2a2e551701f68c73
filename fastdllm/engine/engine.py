"""The engine loop: one packed forward pass per step, as the scheduler decides.

``Engine.step(scheduler)`` runs one step: the scheduler admits and drops sequences and says
which ones feed a prompt chunk and which ones decode; all of it goes through one packed
forward (``ModelRunner``); the logits of every read row are sampled and the accept rule applied
for all sequences at once on the device (``StepDecision``), and read back in one copy, the
step's only device-to-host synchronisation; each sequence's planner turns its picks into decoded
positions; newly contiguous tokens are committed and the stop rules applied. It returns a
``StepEvent``.

AR decoding may run several forwards per step (``steps_per_sync``, as vLLM's multi-step
scheduling): when every running sequence decodes AR, nothing waits to start or end, and no
random generator is shared by two of them, up to that many forwards run back to back, each fed
the tokens the last one picked on the device, and their tokens come back in one read. The
tokens are the same as one forward per step (a sequence's tokens after its stop are dropped,
never past ``max_new_tokens``); the step's events just carry several tokens per sequence.

``Engine.run(seqs)`` is the library's entry point (``LLM.generate``, ``LLM.stream``, the
CLI's live view): a private scheduler sized for ``seqs``, stepped until every one is finished.
The server keeps one scheduler for its lifetime and steps it from its worker thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

from ..model import Transformer
from .autoregressive import AutoregressivePlanner
from .backend import ForwardBackend
from .decision import StepDecision
from .device import download
from .hooks import EngineHooks, PerfCounters
from .runner import ModelRunner
from .sampling import GreedySampler
from .scheduler import Scheduler, kv_need
from .sequence import Sequence


@dataclass
class RowUpdate:
    index: int                      # request index
    new_positions: list[int]        # absolute positions decoded by this forward
    new_tokens: list[int]           # ids that joined the committed output
    block_start: int = 0
    block: list[int] = field(default_factory=list)  # current block (mask id where undecoded); [] in AR mode
    finished: bool = False
    finish_reason: str | None = None
    phase: str = "decode"           # "prefill" (a prompt chunk), "decode", or "ended" (no forward)
    sequence: Sequence | None = field(default=None, repr=False)


@dataclass
class StepEvent:
    step: int
    kind: str                       # "prefill", "decode", "mixed" (both in one forward) or "idle" (no forward)
    rows: list[RowUpdate]           # one per sequence that took part in the forward or ended
    forward_tokens: int = 0         # query tokens of the packed forward (0: no forward ran)
    forwards: int = 1               # forwards the step ran (several: AR steps run back to back)

    @property
    def sequences(self) -> dict[int, Sequence]:
        """The sequences this step touched, by request index (unique within one ``Engine.run``)."""
        return {r.index: r.sequence for r in self.rows}


class Engine:
    def __init__(self, model: Transformer, max_batch_size: int = 8, steps_per_sync: int = 1,
                 backend: ForwardBackend | None = None):
        if steps_per_sync < 1:
            raise ValueError(f"steps_per_sync must be at least 1, got {steps_per_sync}")
        self.model = model
        self.runner = ModelRunner(model, backend=backend)  # the forward backend: ``select_backend`` when None
        self.backend = self.runner.backend
        self.max_batch_size = max_batch_size
        self.steps_per_sync = steps_per_sync  # AR forwards a step may run between two reads
        self._last_decision: tuple[tuple, StepDecision] | None = None

    def run(self, seqs: list[Sequence]) -> Iterator[StepEvent]:
        """Decode ``seqs``, one ``StepEvent`` per forward pass.

        Each sequence decodes with its request's ``params``; sequences with different parameters
        (block diffusion and AR, thresholds, samplers, stop ids) share the packed forwards. At most
        ``max_batch_size`` run at once; the KV pool holds that many of the largest.
        """
        if not seqs:
            return
        n = min(self.max_batch_size, len(seqs))
        sched = Scheduler(n, n * max(kv_need(s) for s in seqs))
        sched.add(seqs)
        while sched.has_work():
            yield self.step(sched)

    @property
    def hooks(self) -> EngineHooks:
        """Called around each step and each backend forward (``hooks.py``; no-op by default)."""
        return self.backend.hooks

    @hooks.setter
    def hooks(self, hooks: EngineHooks | None) -> None:
        self.backend.hooks = hooks or EngineHooks()

    @property
    def counters(self) -> PerfCounters:
        """Steps, tokens, times and forwards since the last ``counters.reset()``."""
        return self.backend.counters

    def step(self, sched: Scheduler) -> StepEvent:
        """One step: admissions, cancellations, and one packed forward of the scheduled work (or a
        run of AR forwards), between the hooks' ``step_start`` and ``step_end``."""
        self.backend.hooks.step_start()
        t0 = time.perf_counter()
        event = self.run_step(sched)
        tokens = event.forward_tokens * event.forwards if event.kind != "idle" else 0
        self.backend.counters.count_step(event.kind, tokens, time.perf_counter() - t0)
        self.backend.hooks.step_end(event)
        return event

    def run_step(self, sched: Scheduler) -> StepEvent:
        """``step`` without the hooks and counters."""
        todo = sched.schedule()
        cache = self.runner.ensure_pool(sched.kv.size)
        for src, dst, n in todo.moves:
            cache.move(0, src, dst, n)
        rows = [RowUpdate(s.index, [], [], finished=True, finish_reason=s.finish_reason, phase="ended", sequence=s)
                for s in todo.ended]
        now = time.perf_counter()
        for seq in todo.admitted:
            seq.started = now
            if not seq.prefill_plans:  # a prompt shorter than a block has nothing to prefill
                seq.planner.after_prefill(seq, None)
        work = [(s, s.prefill_plans[0]) for s in todo.prefill] + [(s, s.planner.plan(s)) for s in todo.decode]
        tokens = sum(len(p.tokens) for _, p in work)
        run = self._run_length(sched, todo, work)
        if run > 1:
            return self._ar_run(sched, todo.number, work, rows, run)
        picks = []
        if work:
            picks = self._decision(work).resolve(self.runner.run([(s.kv_base, p) for s, p in work]))
            self.backend.counters.reads += 1  # resolve's one read
        for (seq, plan), picked in zip(work, picks):
            if plan.kind == "prefill":
                seq.slot.prefill_plans.pop(0)
                if seq.prefill_plans:  # more chunks to come
                    rows.append(RowUpdate(seq.index, [], [], phase="prefill", sequence=seq))
                    continue
                seq.nfe += 1  # the whole prefill counts as one forward
                rows.append(self._emit(seq, seq.planner.after_prefill(seq, picked), "prefill"))
            else:
                seq.nfe += 1
                rows.append(self._emit(seq, seq.planner.apply(seq, plan, picked), "decode"))
        sched.release([s for s, _ in work if s.finished])
        kind = ("mixed" if todo.prefill and todo.decode else "prefill" if todo.prefill
                else "decode" if todo.decode else "idle")
        return StepEvent(todo.number, kind, rows, tokens)

    def _run_length(self, sched: Scheduler, todo, work: list) -> int:
        """Forwards this step may run back to back (1: the usual step)."""
        if self.steps_per_sync == 1 or todo.prefill or not work:
            return 1
        drawing = set()
        for seq, _ in work:
            if not isinstance(seq.planner, AutoregressivePlanner):
                return 1
            sampler = seq.planner.p.sampler
            if not isinstance(sampler, GreedySampler):
                if id(sampler) in drawing:
                    return 1  # a shared generator would draw for every row of the run, finished or not
                drawing.add(id(sampler))
        if not sched.settled():
            return 1  # a sequence waiting to start or be cancelled gets its turn at the next step
        return min(self.steps_per_sync, min(s.max_new_tokens - len(s.output) for s, _ in work))

    def _ar_run(self, sched: Scheduler, number: int, work: list, rows: list, run: int) -> StepEvent:
        """``run`` AR forwards, each fed the last one's tokens; one read; each sequence keeps its
        tokens up to its stop."""
        decision = self._decision(work)
        picked = download(self.runner.run_steps([(s.kv_base, p) for s, p in work], run, decision.tokens,
                                                decision.greedy_only, decision.greedy_mask))  # [run][N]
        self.backend.counters.reads += 1
        for i, (seq, _) in enumerate(work):
            row = self._emit(seq, seq.planner.apply_run(seq, [step[i] for step in picked]), "decode", counted=False)
            rows.append(row)
        sched.release([s for s, _ in work if s.finished])
        return StepEvent(number, "decode", rows, len(work), run)

    def _decision(self, work: list) -> StepDecision:
        """The step's ``StepDecision``; the last one again when the plans read the same (steady decoding
        repeats its shape step after step, and building one costs as much as using it)."""
        key = (self.runner.device, *[(id(s.planner.p.sampler), len(p.logit_rows), p.threshold, p.acceptance)
                                     for s, p in work])
        if self._last_decision is None or self._last_decision[0] != key:
            plans = [(s.planner.p.sampler, len(p.logit_rows), p.threshold, p.acceptance) for s, p in work]
            self._last_decision = (key, StepDecision(plans, self.runner.device))  # holds the samplers: ids stay theirs
        return self._last_decision[1]

    def _emit(self, seq: Sequence, positions: list[int], phase: str, counted: bool = True) -> RowUpdate:
        """Commit newly contiguous tokens and apply the stop rules. ``counted=False``: the tokens of
        an AR run, one forward each (``nfe`` and ``positions`` count those kept, up to the stop)."""
        planner = seq.planner
        kept = []
        for tok in planner.take_ready(seq):
            if seq.finished:
                break
            kept.append(tok)
            seq.output.append(tok)
            if tok in planner.p.stop_token_ids:
                seq.finish("stop")
            elif len(seq.output) >= seq.max_new_tokens:
                seq.finish("length")
        if kept and seq.detok is not None and seq.detok.add(kept):
            extra = len(seq.output) - seq.detok.stopped_at  # ids after the one completing the stop string
            del seq.output[seq.detok.stopped_at:]
            kept = kept[:len(kept) - extra]
            seq.finish("stop")
        if seq.finished and seq.detok is not None:
            seq.detok.flush()
        if not counted:  # one forward per token kept; the ones after the stop were never needed
            seq.nfe += len(kept)
            positions = positions[:len(kept)]
        return RowUpdate(seq.index, positions, kept, seq.block_start, list(seq.block), seq.finished,
                         seq.finish_reason, phase, seq)
