"""The channel from the engine thread to one request's handler, bounded by coalescing.

The engine thread ``put``s a ``Delta`` per sequence and step (the text and token ids that are
new, not the whole output); the handler iterates over ``deltas()`` on the event loop. The engine
never waits for a client: deltas a slow consumer has not taken yet are merged into one per
sequence, so what is held for a request is at most its own output, however slow the client,
and at most one wake-up callback per request is pending on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import AsyncIterator

from .frames import Frame, coalesce


@dataclass
class Delta:
    text: str = ""                  # new text that can be shown (stop-string tails held back)
    token_ids: list[int] = field(default_factory=list)  # newly committed ids
    finished: bool = False
    finish_reason: str | None = None
    nfe: int = 0                    # forward passes so far
    frames: list[Frame] = field(default_factory=list)  # block states, for jobs that asked (the denoising view)

    def merge(self, later: Delta) -> None:
        self.text += later.text
        self.token_ids += later.token_ids
        if later.frames:
            self.frames = coalesce(self.frames, later.frames)
        self.finished, self.finish_reason, self.nfe = later.finished, later.finish_reason, later.nfe


class JobStream:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: dict[int, Delta] = {}  # sequence index -> merged deltas not yet taken
        self._closed = False
        self._error: BaseException | None = None
        self._signalled = False  # a wake-up is on its way to the loop
        self._ready = asyncio.Event()

    # ---- engine thread -----------------------------------------------------------------------
    def put(self, index: int, delta: Delta) -> None:
        with self._lock:
            held = self._pending.get(index)
            if held is None:
                self._pending[index] = delta
            else:
                held.merge(delta)
            self._signal()

    def close(self, error: BaseException | None = None) -> None:
        """No more deltas (``error``: the iteration raises it after the pending deltas)."""
        with self._lock:
            self._closed, self._error = True, error
            self._signal()

    def _signal(self) -> None:
        if not self._signalled:
            self._signalled = True
            try:
                self._loop.call_soon_threadsafe(self._ready.set)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    # ---- event loop ----------------------------------------------------------------------------
    async def deltas(self) -> AsyncIterator[list[tuple[int, Delta]]]:
        """Batches of ``(sequence index, delta)``, in index order, until the job ends."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            with self._lock:
                batch, self._pending = self._pending, {}
                closed, error = self._closed, self._error
                self._signalled = False
            if batch:
                yield sorted(batch.items())
            if error is not None:
                raise error
            if closed:
                return
