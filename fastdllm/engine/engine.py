"""The scheduling loop: admit sequences, prefill them, step the batch, stream the states.

``Engine.run`` is a generator of ``StepEvent``s, one per forward pass; generation results,
the CLI's live view and the server are all built on top of it. Sequences are admitted while
KV-cache slots are free, each one prefilled on its own; then every step runs one packed
forward for all active sequences. Finished sequences leave the batch and free their slot.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..model import Transformer
from .autoregressive import AutoregressivePlanner
from .diffusion import DiffusionPlanner
from .params import DecodeParams
from .runner import ModelRunner
from .sequence import Sequence


Admit = Callable[[int, Callable[["Sequence"], bool]], list[Sequence]]


@dataclass
class RowUpdate:
    index: int                      # request index
    new_positions: list[int]        # absolute positions decoded by this forward
    new_tokens: list[int]           # ids that joined the committed output
    block_start: int = 0
    block: list[int] = field(default_factory=list)  # current block (mask id where undecoded); [] in AR mode
    finished: bool = False
    finish_reason: str | None = None


@dataclass
class StepEvent:
    step: int
    kind: str                       # "prefill" or "decode"
    rows: list[RowUpdate]
    sequences: dict[int, Sequence]  # live state of every admitted sequence, by request index


class Engine:
    def __init__(self, model: Transformer, max_batch_size: int = 8):
        self.model = model
        self.runner = ModelRunner(model)
        self.max_batch_size = max_batch_size

    def run(self, seqs: list[Sequence], params: DecodeParams | None = None, admit: Admit | None = None,
            reserve: int = 0) -> Iterator[StepEvent]:
        """Decode ``seqs``, one ``StepEvent`` per forward pass.

        Each sequence decodes with its own ``seq.params`` when set, else with ``params``; sequences
        with different parameters (block diffusion and AR, thresholds, samplers, stop ids) share
        the packed forwards. ``admit(n, fits)`` (continuous batching): called before every step
        while slots are free; returns up to ``n`` more sequences (unique ``index``es, ``params``
        set) for which ``fits(seq)`` holds (their KV fits the cache). With it the cache has
        ``max_batch_size`` slots of at least ``reserve`` positions.
        """
        planners: dict[int, tuple[DecodeParams, object]] = {}

        def planner_of(seq: Sequence):
            p = seq.params if seq.params is not None else params
            if p is None:
                raise ValueError(f"sequence {seq.index} has no decoding parameters")
            entry = planners.get(id(p))
            if entry is None:  # the params object is kept in the entry, so its id stays unique
                entry = planners[id(p)] = (p, DiffusionPlanner(p) if p.mode == "diffusion"
                                           else AutoregressivePlanner(p))
            return entry[1]

        slots = self.max_batch_size if admit is not None else min(self.max_batch_size, len(seqs))
        cache = self.runner.ensure_cache(slots, max([planner_of(s).capacity(s) for s in seqs] + [reserve]))
        free = list(range(slots - 1, -1, -1))
        waiting = deque(seqs)
        active: list[Sequence] = []
        live: dict[int, Sequence] = {}
        step = 0

        def fits(seq: Sequence) -> bool:
            return planner_of(seq).capacity(seq) <= cache.max_len

        while waiting or active:
            if admit is not None and len(free) > len(waiting):
                waiting.extend(admit(len(free) - len(waiting), fits))
            while waiting and free:
                seq = waiting.popleft()
                seq.slot = free.pop()
                live[seq.index] = seq
                update = self._prefill(seq, planner_of(seq))
                step += 1
                yield StepEvent(step, "prefill", [update], live)
                if seq.finished:
                    free.append(seq.slot)
                else:
                    active.append(seq)
            if not active:
                continue
            plans = [planner_of(s).plan(s) for s in active]
            logits = self.runner.run([(s.slot, p) for s, p in zip(active, plans)])
            updates = []
            for seq, plan, lg in zip(active, plans, logits):
                seq.nfe += 1
                planner = planner_of(seq)
                positions = planner.apply(seq, plan, lg)
                updates.append(self._emit(seq, planner, positions))
            step += 1
            yield StepEvent(step, "decode", updates, live)
            for seq in [s for s in active if s.finished]:
                free.append(seq.slot)
            active = [s for s in active if not s.finished]

    def _prefill(self, seq: Sequence, planner):
        seq.started = time.perf_counter()
        if seq.max_new_tokens <= 0:
            seq.finish("length")
            return RowUpdate(seq.index, [], [], finished=True, finish_reason="length")
        plans = planner.prefill_plans(seq)
        logits = None
        for plan in plans:
            logits = self.runner.run([(seq.slot, plan)])[0]
        if plans:
            seq.nfe += 1
        positions = planner.after_prefill(seq, logits)
        return self._emit(seq, planner, positions)

    def _emit(self, seq: Sequence, planner, positions: list[int]) -> RowUpdate:
        """Commit newly contiguous tokens and apply the stop rules."""
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
        return RowUpdate(seq.index, positions, kept, seq.block_start, list(seq.block), seq.finished,
                         seq.finish_reason)
