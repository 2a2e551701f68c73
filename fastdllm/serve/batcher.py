"""The server's generation worker: one thread steps the engine for every request.

Request handlers tokenize and check a request, then ``Batcher.submit`` a ``Job`` (its
sequences, each with its own decoding parameters). The worker thread owns an ``Engine`` (with
its own KV cache, allocated once at start at the size the flags allow) and one ``Scheduler``
for the server's lifetime, and calls ``Engine.step`` while there is work: sequences join and
leave the running batch at every step (continuous batching; admission rules in
``engine/scheduler.py``). Greedy decoding is batch-invariant, so a batched request gets exactly
the tokens it would get alone; a seeded sampling request over several prompts runs alone, so
its sequences draw from its generator in the order they would alone.

After every step each changed sequence's new text and token ids go to its job's ``JobStream``
(coalesced for slow clients); the stream closes when all of the job's sequences have ended.
A job with ``frames`` set (the denoising page's ``POST /v1/denoise``) also gets a ``Frame`` of
each sequence's current block after every forward (``frames.py``).
``Batcher.cancel`` (a client that went away) ends a job's sequences at the next step, before
any prefill if they are still waiting. Nothing here is kept per request once it ends: a
sequence points to its job (``seq.owner``), the job is dropped by the batcher with its last
sequence; ``stats`` reports the sizes of what is held.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from ..engine.engine import Engine, StepEvent
from ..engine.scheduler import Scheduler
from ..engine.sequence import Sequence
from .frames import FrameTracker
from .stream import Delta, JobStream

log = logging.getLogger("fastdllm.serve")


@dataclass(eq=False)
class Job:
    seqs: list[Sequence]           # ``params`` set, ``index`` = position in the request
    stream: JobStream
    alone: bool = False            # must not share steps with other requests (see ``runs_alone``)
    created: float = field(default_factory=time.perf_counter)  # the request's arrival
    remaining: int = -1            # sequences not yet ended (set by ``submit``)
    frames: bool = False           # send each sequence's block after every forward (the denoising view)


@dataclass(eq=False)
class _Owner:
    """What the worker keeps about a running sequence, on the sequence itself."""

    job: Job
    index: int
    sent: int = 0                  # characters of text already sent
    last_token_at: float | None = None
    tracker: FrameTracker | None = None  # for jobs with ``frames``


def runs_alone(options: dict, n_sequences: int) -> bool:
    """Seeded sampling over several prompts must not share steps (see the module docstring)."""
    return n_sequences > 1 and (options.get("temperature") or 0.0) > 0 and options.get("seed") is not None


class Batcher:
    def __init__(self, model, max_batch_size: int, kv_tokens: int, prefill_budget: int = 512,
                 interleave_prefill: bool = True, max_waiting: int | None = None, metrics=None, backend=None):
        self.engine = Engine(model, max_batch_size, backend=backend)  # backend: the loaded LLM's (its runtime options)
        self.scheduler = Scheduler(max_batch_size, kv_tokens, prefill_budget, interleave_prefill,
                                   max_waiting=max_waiting)
        self.metrics = metrics
        self._lock = threading.Lock()
        self._open_jobs = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fastdllm-engine", daemon=True)
        self.largest_batch = 0     # most sequences one decode step ran (for /health and tests)

    def start(self) -> None:
        self.engine.runner.ensure_pool(self.scheduler.kv.size)  # the whole cache, now: fail early, never grow
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.scheduler.wake()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._fail(self.scheduler.drain(), RuntimeError("the server is shutting down"))

    def submit(self, job: Job) -> None:
        """Queue ``job``; the scheduler's ``QueueFull`` propagates (nothing is kept then)."""
        job.remaining = len(job.seqs)
        for i, seq in enumerate(job.seqs):
            seq.owner = _Owner(job, i, tracker=FrameTracker() if job.frames else None)
        with self._lock:
            self._open_jobs += 1
        try:
            self.scheduler.add(job.seqs, exclusive=job.alone)
        except Exception:
            for seq in job.seqs:
                seq.owner = None
            with self._lock:
                self._open_jobs -= 1
            raise

    def cancel(self, job: Job) -> None:
        self.scheduler.cancel(job.seqs)

    def stats(self) -> dict[str, int]:
        cache = self.engine.runner.cache
        with self._lock:
            open_jobs = self._open_jobs
        return {**self.scheduler.stats(), "open_jobs": open_jobs, "largest_batch": self.largest_batch,
                "kv_cache_bytes": cache.nbytes if cache is not None else 0}

    # ---- worker thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            if not self.scheduler.wait(timeout=0.5):
                continue
            try:
                event = self.engine.step(self.scheduler)
            except Exception as e:  # a bug: fail the requests in flight, keep serving
                log.exception("generation failed")
                self._fail(self.scheduler.drain(), e)
                continue
            self._dispatch(event)

    def _dispatch(self, event: StepEvent) -> None:
        m, now = self.metrics, time.perf_counter()
        decoding = sum(1 for r in event.rows if r.phase == "decode")
        self.largest_batch = max(self.largest_batch, decoding)
        if m is not None and event.forward_tokens:
            m.forward_passes.inc()
        for row in event.rows:
            seq = row.sequence
            owner: _Owner | None = seq.owner
            if owner is None:
                continue
            text = seq.detok.stable_text(seq.finished) if seq.detok is not None else ""
            new_text, owner.sent = text[owner.sent:], len(text)
            frame = owner.tracker.update(row, seq) if owner.tracker is not None else None
            if row.new_tokens or new_text or row.finished or frame is not None:
                owner.job.stream.put(owner.index, Delta(new_text, list(row.new_tokens), row.finished,
                                                        row.finish_reason, seq.nfe, [frame] if frame else []))
            if m is not None:
                self._measure(m, row, owner, now)
            if row.finished:
                self._end(seq, owner, now)

    @staticmethod
    def _measure(m, row, owner: _Owner, now: float) -> None:
        if row.phase == "decode":
            m.tokens_per_forward.observe(len(row.new_positions))
        n = len(row.new_tokens)
        if n:
            m.completion_tokens.inc(n)
            if owner.last_token_at is None:
                m.ttft.observe(now - owner.job.created)
            else:
                per_token = (now - owner.last_token_at) / n
                for _ in range(n):
                    m.inter_token.observe(per_token)
            owner.last_token_at = now

    def _end(self, seq: Sequence, owner: _Owner, now: float) -> None:
        seq.owner = None
        m = self.metrics
        if m is not None:
            m.finished.labels(seq.finish_reason or "unknown").inc()
            if seq.nfe > 0 or seq.finish_reason in ("stop", "length"):
                m.prompt_tokens.inc(seq.prompt_len)
        job = owner.job
        job.remaining -= 1
        if job.remaining == 0:
            job.stream.close()
            with self._lock:
                self._open_jobs -= 1
            if m is not None:
                m.request_seconds.observe(now - job.created)

    def _fail(self, seqs: list[Sequence], error: BaseException) -> None:
        jobs = {}
        for seq in seqs:
            owner = seq.owner
            if owner is not None:
                seq.owner = None
                jobs[id(owner.job)] = owner.job
        for job in jobs.values():
            job.stream.close(error)
            with self._lock:
                self._open_jobs -= 1
