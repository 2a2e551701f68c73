"""Which KV-cache positions belong to which running sequence.

The engine's KV cache is one pool of ``size`` positions. A sequence admitted to run gets a
contiguous span of ``seq.slot.kv_need`` positions (its planner's ``capacity``: prompt plus
output, rounded up to a whole block in block diffusion) starting at ``seq.slot.kv_base`` (this
module is the only writer of ``kv_base``), and gives it back
when it finishes. Spans are placed first-fit; when no gap is large enough but the free
positions add up, the spans are slid to the start of the pool (``allocate`` returns the moves,
which the engine applies to the cache before the next forward), so a sequence fits exactly
when ``need <= free``: the pool is a plain token budget, with no fragmentation to reason about.
"""

from __future__ import annotations

from .sequence import Sequence

Move = tuple[int, int, int]  # (src, dst, length) in pool positions


class KVSpace:
    def __init__(self, size: int):
        self.size = size
        self._spans: list[Sequence] = []  # holders, sorted by kv_base

    @property
    def used(self) -> int:
        return sum(s.kv_need for s in self._spans)

    @property
    def free(self) -> int:
        return self.size - self.used

    def __len__(self) -> int:
        return len(self._spans)

    def allocate(self, seq: Sequence) -> list[Move] | None:
        """Give ``seq`` a span of ``seq.kv_need`` positions; None if they are not free.

        Returns the span moves the cache must apply first (empty unless the pool was compacted).
        """
        need = seq.kv_need
        if need > self.free:
            return None
        moves: list[Move] = []
        at = self._first_fit(need)
        if at is None:
            moves, at = self._compact(), self.used
        seq.slot.kv_base = at
        self._spans.append(seq)
        self._spans.sort(key=lambda s: s.kv_base)
        return moves

    def release(self, seq: Sequence) -> None:
        if seq.kv_base is not None:
            self._spans = [s for s in self._spans if s is not seq]
            seq.slot.kv_base = None

    def _first_fit(self, need: int) -> int | None:
        pos = 0
        for s in self._spans:
            if s.kv_base - pos >= need:
                return pos
            pos = s.kv_base + s.kv_need
        return pos if self.size - pos >= need else None

    def _compact(self) -> list[Move]:
        moves, pos = [], 0
        for s in self._spans:  # in base order, so every move goes left and never over a later span
            if s.kv_base != pos:
                moves.append((s.kv_base, pos, s.kv_need))
                s.slot.kv_base = pos
            pos += s.kv_need
        return moves
