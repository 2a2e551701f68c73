"""Autoregressive step planner: causal prefill, then one token per forward.

The baseline the block-diffusion speed-ups are measured against, on the same engine. Each
forward reads one row; the engine samples it (``decision.py``) and hands the token over, or,
when it runs several forwards between two reads (``Engine.steps_per_sync``), hands over their
tokens together (``apply_run``).
"""

from __future__ import annotations

from .params import DecodeParams
from .sequence import ForwardPlan, Sequence


class AutoregressivePlanner:
    def __init__(self, params: DecodeParams):
        self.p = params
        self._pending: dict[int, list[int]] = {}

    @staticmethod
    def capacity(params: DecodeParams, limit: int) -> int:
        return limit

    def prefill_plans(self, seq: Sequence) -> list[ForwardPlan]:
        L, chunk = seq.prompt_len, max(1, self.p.prefill_chunk)
        plans = [ForwardPlan(seq.prompt[a:min(L, a + chunk)], a, min(L, a + chunk), [], "causal", "prefill")
                 for a in range(0, L, chunk)]
        plans[-1].logit_rows = [len(plans[-1].tokens) - 1]
        return plans

    def after_prefill(self, seq: Sequence, picks: list[int] | None) -> list[int]:
        return self._take(seq, picks) if picks else []

    def plan(self, seq: Sequence) -> ForwardPlan:
        pos = seq.prompt_len + len(seq.output) - 1
        return ForwardPlan([seq.output[-1]], pos, pos + 1, [0])

    def apply(self, seq: Sequence, plan: ForwardPlan, picks: list[int]) -> list[int]:
        return self._take(seq, picks)

    def apply_run(self, seq: Sequence, tokens: list[int]) -> list[int]:
        """The tokens of several forwards in a row (each fed the one before); the engine keeps
        those up to the first stop."""
        self._pending[seq.index] = tokens
        first = seq.prompt_len + len(seq.output)
        return list(range(first, first + len(tokens)))

    def _take(self, seq: Sequence, picks: list[int]) -> list[int]:
        self._pending[seq.index] = picks[:1]  # a one-row pick is always accepted
        return [seq.prompt_len + len(seq.output)]

    def take_ready(self, seq: Sequence) -> list[int]:
        return self._pending.pop(seq.index, [])
