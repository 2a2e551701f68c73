"""The server's generation worker: one thread owns the engine and batches requests.

Request handlers validate and tokenize a request (``LLM.prepare``) on the event loop and hand
the resulting sequences to ``Batcher.submit``. The worker thread decodes the jobs at the head
of the queue together in one ``Engine.run`` (up to ``max_batch_size`` sequences), and while it
runs, the next jobs join as slots free up (continuous batching), first come first served, as
long as their prompt and output fit the KV cache reserved per slot (``kv_cache_tokens``).
Every sequence keeps its own decoding parameters (block diffusion or AR, threshold, block
sizes, sampler, stop ids), so any requests can share a batch. Greedy decoding is
batch-invariant, so a batched request gets exactly the tokens it would get alone. A seeded
sampling request with several prompts runs on its own, so the order in which its sequences
draw from its generator is the one it would have alone.

After every forward pass the worker sends each job a ``Progress`` per changed sequence through
the job's event loop (``call_soon_threadsafe``), then a final ``None``. A job whose client went
away is cancelled: its sequences are finished at the next step and leave the batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field

from ..engine.params import DecodeParams
from ..engine.sequence import Sequence

log = logging.getLogger("fastdllm.serve")


@dataclass
class Progress:
    index: int                  # the sequence's position in its job
    text: str                   # the text so far that can be shown (stop-string tails held back)
    token_ids: list[int]        # generated ids so far
    finished: bool
    finish_reason: str | None
    nfe: int
    prompt_tokens: int


@dataclass
class Job:
    seqs: list[Sequence]
    params: DecodeParams
    alone: bool
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the client is gone
            self.cancelled.set()


def runs_alone(options: dict, n_sequences: int) -> bool:
    """Seeded sampling over several prompts must not share a run (see the module docstring)."""
    return n_sequences > 1 and (options.get("temperature") or 0.0) > 0 and options.get("seed") is not None


class Batcher:
    def __init__(self, llm, max_batch_size: int | None = None, kv_cache_tokens: int = 0):
        self.llm = llm
        self.max_batch_size = max_batch_size or llm.engine.max_batch_size
        self.kv_cache_tokens = kv_cache_tokens
        self._jobs: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="fastdllm-engine", daemon=True)
        self.batches = 0          # engine runs so far (for /health and tests)
        self.largest_batch = 0    # most sequences one engine run decoded
        self.joined = 0           # jobs that joined a running batch

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        for seq in job.seqs:
            seq.params = job.params
        with self._cv:
            self._jobs.append(job)
            self._cv.notify()

    @property
    def waiting(self) -> int:
        with self._cv:
            return len(self._jobs)

    # ---- worker thread ----------------------------------------------------------------------
    def _next_batch(self) -> list[Job] | None:
        with self._cv:
            while not self._jobs and not self._stopping:
                self._cv.wait()
            if self._stopping:
                return None
            first = self._jobs.popleft()
            batch, size = [first], len(first.seqs)
            while not first.alone and self._jobs and not self._jobs[0].alone and \
                    size + len(self._jobs[0].seqs) <= self.max_batch_size:
                job = self._jobs.popleft()
                batch.append(job)
                size += len(job.seqs)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except Exception as e:  # a bug: report it to every waiting client, keep serving
                log.exception("generation failed")
                for job in batch:
                    job.send(e)
            finally:
                for job in batch:
                    job.send(None)

    def _run(self, batch: list[Job]) -> None:
        owners: list[tuple[Job, int]] = []
        seqs: list[Sequence] = []

        def register(job: Job) -> list[Sequence]:
            for i, seq in enumerate(job.seqs):
                seq.index = len(seqs)
                owners.append((job, i))
                seqs.append(seq)
            return job.seqs

        def admit(n: int, fits) -> list[Sequence]:
            taken: list[Sequence] = []
            with self._cv:
                while self._jobs and not self._stopping:
                    job = self._jobs[0]
                    if batch[0].alone or job.alone or len(taken) + len(job.seqs) > n or \
                            not all(fits(s) for s in job.seqs):
                        break  # first come, first served: nothing overtakes the head of the queue
                    self._jobs.popleft()
                    batch.append(job)
                    self.joined += 1
                    taken += register(job)
            return taken

        for job in batch:
            register(job)
        self.batches += 1
        for event in self.llm.engine.run(list(seqs), admit=admit, reserve=self.kv_cache_tokens):
            if event.kind == "decode":  # one row per active sequence
                self.largest_batch = max(self.largest_batch, len(event.rows))
            for row in event.rows:
                job, i = owners[row.index]
                seq = seqs[row.index]
                if row.new_tokens or row.finished:
                    job.send(_progress(i, seq))
            for job in batch:
                if job.cancelled.is_set():
                    for seq in job.seqs:
                        if not seq.finished:
                            seq.max_new_tokens = 0  # not yet admitted: the engine finishes it at once
                            seq.finish("cancelled")


def _progress(index: int, seq: Sequence) -> Progress:
    text = seq.detok.stable_text(seq.finished) if seq.detok is not None else ""
    return Progress(index, text, list(seq.output), seq.finished, seq.finish_reason, seq.nfe, seq.prompt_len)
