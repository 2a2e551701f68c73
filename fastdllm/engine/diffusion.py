"""Block-diffusion step planner (the decoding contract of Fast-dLLM v2).

A sequence decodes one block of ``block_size`` positions at a time, one sub-block of
``small_block_size`` at a time. Each step feeds the block (or, with the sub-block cache and a
fresh block KV, only the current sub-block), reads the logits of position i from output i-1
(token shift), and fills every masked position of the sub-block whose confidence exceeds the
threshold, and always the most confident one (or, with an ordered accept rule, the leftmost
masked position and the confident run after it: ``acceptance.py``). A full block is fed once more to commit its KV,
and that forward's last output gives the first token of the next block.

The planner only plans and keeps the books: the engine samples and applies the accept rule for
all sequences of a step at once (``decision.py``) and hands each planner its picks, one per
read row (the token, or -1 where the row was not accepted).
"""

from __future__ import annotations

from .params import DecodeParams
from .sequence import ForwardPlan, Sequence


class DiffusionPlanner:
    """Writes the sequence's ``DecodeState`` (``seq.state``), and nothing else of it."""

    def __init__(self, params: DecodeParams):
        self.p = params
        self.mask = params.mask_token_id

    @staticmethod
    def capacity(params: DecodeParams, limit: int) -> int:
        bs = params.block_size
        return -(-limit // bs) * bs  # the block holding position limit-1 must fit

    def prefill_plans(self, seq: Sequence) -> list[ForwardPlan]:
        """Whole prompt blocks go to the KV cache under the block-causal mask."""
        bs, L = self.p.block_size, seq.prompt_len
        end = L // bs * bs
        chunk = max(bs, self.p.prefill_chunk // bs * bs)
        plans = []
        for a in range(0, end, chunk):
            b = min(end, a + chunk)
            plans.append(ForwardPlan(seq.prompt[a:b], a, b, [], "block_causal", "prefill", bs))
        if plans and L % bs == 0:
            plans[-1].logit_rows = [len(plans[-1].tokens) - 1]
        if not plans or L % bs:  # the prompt tail opens the first block
            st = seq.state
            st.block_start = end
            st.block = seq.prompt[end:] + [self.mask] * (bs - (L - end))
            st.gen_from = st.emitted = L - end
        return plans

    def after_prefill(self, seq: Sequence, picks: list[int] | None) -> list[int]:
        if not picks:
            return []
        return self._open_block(seq, seq.prompt_len, picks[0])

    def _open_block(self, seq: Sequence, start: int, token: int) -> list[int]:
        # the first token of a block is autoregressive: a one-row pick, always accepted
        st = seq.state
        st.block_start = start
        st.block = [token] + [self.mask] * (self.p.block_size - 1)
        st.gen_from, st.emitted, st.block_cache_fresh = 0, 0, False
        return [start]

    def plan(self, seq: Sequence) -> ForwardPlan:
        st = seq.state
        bs, sbs, block = self.p.block_size, self.p.small_block_size, st.block
        kv_end = st.block_start + bs
        masked = [i for i in range(bs) if block[i] == self.mask]
        if not masked:
            return ForwardPlan(list(block), st.block_start, kv_end, [bs - 1], kind="commit")
        s0 = masked[0] // sbs * sbs
        targets = [i for i in masked if i < s0 + sbs]
        if self.p.use_block_cache and st.block_cache_fresh and block[s0] != self.mask:
            # only the sub-block is recomputed; the rest of the block reuses its cached KV
            plan = ForwardPlan(block[s0:s0 + sbs], st.block_start + s0, kv_end, [i - 1 - s0 for i in targets])
        else:
            plan = ForwardPlan(list(block), st.block_start, kv_end, [i - 1 for i in targets])
            st.block_cache_fresh = True
        plan.targets = targets
        plan.threshold = self.p.threshold
        plan.acceptance = self.p.acceptance
        return plan

    def apply(self, seq: Sequence, plan: ForwardPlan, picks: list[int]) -> list[int]:
        """Update the block from a forward's picks (token or -1 per read row); return the positions decoded."""
        st = seq.state
        if plan.kind == "commit":
            return self._open_block(seq, st.block_start + self.p.block_size, picks[0])
        decoded = []
        for pos, token in zip(plan.targets, picks):
            if token >= 0:
                st.block[pos] = token
                decoded.append(st.block_start + pos)
        return decoded

    def take_ready(self, seq: Sequence) -> list[int]:
        """Newly contiguous decoded tokens of the block (they can no longer change)."""
        st = seq.state
        block, i = st.block, st.emitted
        while i < len(block) and block[i] != self.mask:
            i += 1
        ready = block[st.emitted:i]
        st.emitted = i
        return ready
