"""The server's generation worker: one thread owns the engine and batches compatible requests.

Request handlers validate and tokenize a request (``LLM.prepare``) on the event loop and hand
the resulting sequences to ``Batcher.submit``. The worker thread takes the oldest waiting job
and every other waiting job with the same decoding parameters (mode, threshold, block sizes,
sampling, stop ids), up to ``max_batch_size`` sequences, and decodes them in one
``Engine.run``. While it runs, jobs at the head of the queue with the same parameters join it
as slots free up (continuous batching), as long as their prompt and output fit the KV cache
reserved per slot (``kv_cache_tokens``); a job with other parameters waits for the next run,
and no later job overtakes it. Greedy decoding is batch-invariant, so a batched request gets
exactly the tokens it would get alone. Seeded sampling requests run alone so their random
stream is their own.

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
    key: tuple
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the client is gone
            self.cancelled.set()


def batch_key(options: dict, params: DecodeParams) -> tuple:
    """Jobs with equal keys can share one ``Engine.run``; seeded sampling never shares."""
    sampled = (options.get("temperature") or 0.0) > 0
    if sampled and options.get("seed") is not None:
        return ("alone", id(options))
    return (params.mode, params.block_size, params.small_block_size, params.threshold, params.use_block_cache,
            params.mask_token_id, params.stop_token_ids, options.get("temperature") or 0.0,
            options.get("top_p", 1.0), options.get("top_k", 0))


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
            for job in list(self._jobs):
                if job.key == first.key and size + len(job.seqs) <= self.max_batch_size:
                    self._jobs.remove(job)
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
                    if job.key != batch[0].key or len(taken) + len(job.seqs) > n or \
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
        for event in self.llm.engine.run(list(seqs), batch[0].params, admit=admit, reserve=self.kv_cache_tokens):
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
