"""The step's accept rule, for every read row of a packed forward at once, on the device.

The rows a plan reads form a segment. Every row gets a token and a confidence from its
sequence's sampler: the greedy rows of the whole step in one batched pick (``greedy_pick``
over the step's logits); the rows of any other sampler (temperature sampling with its own
seeded generator, greedy with another mask token) plan by plan, in packed order, so that each
generator draws exactly what it drew when sequences were decided one at a time. A row is
accepted when its confidence exceeds its plan's threshold, and the most confident row of each
segment always is (the first maximum on ties, as ``torch.argmax``): a block-diffusion sub-block
keeps every confident position and at least one; an AR step, a block's first token and a
prompt's last row are one-row segments, always accepted. A plan may name an ordered rule instead
(``acceptance.py``: ``prefix``, ``joint``): its first row is always accepted and the rows after it
while each (``prefix``) or their running product (``joint``) exceeds the threshold.

The accepted tokens (-1 elsewhere) come back to the host in ONE copy: the step's only
device-to-host synchronisation. Segment ids and thresholds go up before the forward.
"""

from __future__ import annotations

from collections import Counter

import torch

from .acceptance import DEFAULT_RULE, ORDERED
from .device import download, upload
from .sampling import GreedySampler, Sampler, argmax_excluding, greedy_pick


class StepDecision:
    def __init__(self, plans: list[tuple], device: torch.device):
        """``plans``: (sampler, rows read, threshold[, accept rule]) per plan, in packed order (before
        the forward); the rule defaults to ``threshold``."""
        self.samplers = [p[0] for p in plans]
        self.sizes = [p[1] for p in plans]
        self.thresholds = [p[2] for p in plans]
        rules = [p[3] if len(p) > 3 else DEFAULT_RULE for p in plans]
        self.rows = sum(self.sizes)
        masks = Counter(p[0].mask_token_id for p in plans if p[1] and isinstance(p[0], GreedySampler))
        self.greedy_mask = masks.most_common(1)[0][0] if masks else None
        self.batched = bool(masks)  # some rows are picked by the batched greedy pick
        # one-row segments (AR steps, block openers) are always accepted: no confidence needed
        self.single_rows = all(n <= 1 for n in self.sizes)
        self.segments = sum(1 for n in self.sizes if n)
        used = {t for n, t in zip(self.sizes, self.thresholds) if n}
        self.threshold = used.pop() if len(used) == 1 else upload(
            [t for n, t in zip(self.sizes, self.thresholds) for _ in range(n)], torch.float64, device)  # [R]
        counts = [n for n in self.sizes if n]  # rows of each non-empty segment
        # segment of each row (only multi-row steps read it; a step of single rows skips building it)
        ids = [] if self.single_rows else [i for i, n in enumerate(counts) for _ in range(n)]
        if self.segments > 1 and not self.single_rows:
            self.segment = upload(ids, torch.long, device)  # [R] segment of each row, non-empty segments only
        # ordered rules (prefix, joint) on segments of more than one row: a [S, L] layout of the rows
        # so that each segment's running test is one cumulative op along its row
        seg_rules = [r for n, r in zip(self.sizes, rules) if n]
        self.ordered = None
        if not self.single_rows and any(r in ORDERED for r in seg_rules):
            starts = [sum(counts[:i]) for i in range(len(counts))]
            self.ordered = (
                self.segment if self.segments > 1 else upload(ids, torch.long, device),  # [R] segment
                upload([j for n in counts for j in range(n)], torch.long, device),  # [R] column in it
                upload([r in ORDERED for r in seg_rules], torch.bool, device),  # [S] ordered segment
                upload([seg_rules[i] == "joint" for i, n in enumerate(counts) for _ in range(n)], torch.bool,
                       device),  # [R] row of a joint segment
                upload(starts, torch.long, device),  # [S] first row of each segment
                max(counts))

    @property
    def greedy_only(self) -> bool:
        """Every row is picked by the batched greedy pick (the argmax but ``greedy_mask``)."""
        return self.batched and all(self._is_batched(s) for s, n in zip(self.samplers, self.sizes) if n)

    def _is_batched(self, sampler: Sampler) -> bool:
        return self.batched and isinstance(sampler, GreedySampler) and sampler.mask_token_id == self.greedy_mask

    def _sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every row's token [R] and (unless all segments are one row) confidence [R]."""
        R, dev = self.rows, logits.device
        conf = None
        if self.batched and self.single_rows:
            tokens = argmax_excluding(logits, self.greedy_mask)  # the argmax alone
        elif self.batched:
            tokens, conf = greedy_pick(logits, self.greedy_mask)
        else:
            tokens = torch.empty(R, dtype=torch.long, device=dev)
            if not self.single_rows:
                conf = torch.empty(R, dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32,
                                   device=dev)
        a = 0
        for sampler, n in zip(self.samplers, self.sizes):
            if n and not self._is_batched(sampler):
                t, c = sampler(logits[a:a + n])  # the plan's own draw
                tokens[a:a + n] = t
                if conf is not None:
                    conf[a:a + n] = c
            a += n
        return tokens, conf

    def tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [R, V] of the read rows, plan by plan -> [R] on the device: each row's token, -1 where
        it is not accepted (nothing is read back: ``ModelRunner.run_steps`` feeds these to the next
        forward)."""
        tokens, conf = self._sample(logits)
        if conf is not None:
            wide = conf if conf.dtype == torch.float64 else conf.double()
            accept = wide > self.threshold  # [R]; compared as Python floats are: float32(0.1) > 0.1
            forced = self._most_confident(conf)
            if self.ordered is not None:
                accept, forced = self._ordered(wide, accept, forced)
            accept.index_fill_(0, forced, True)
            tokens = torch.where(accept, tokens, -1)
        return tokens

    def resolve(self, logits: torch.Tensor) -> list[list[int]]:
        """logits [R, V] of the read rows, plan by plan -> per plan, per row: the token, or -1 if not accepted."""
        if not self.rows:
            return [[] for _ in self.sizes]
        flat = download(self.tokens(logits))  # the step's one device-to-host copy
        out, a = [], 0
        for n in self.sizes:
            out.append(flat[a:a + n])
            a += n
        return out

    def _ordered(self, wide: torch.Tensor, over: torch.Tensor, forced: torch.Tensor):
        """The ordered rules on their segments: wide [R] float64 confidences, over [R] (> threshold),
        forced ([S] or one index) -> (accept [R], forced rows [S])."""
        seg, col, ordered_seg, joint_row, first, width = self.ordered
        S = ordered_seg.shape[0]
        # prefix: a row counts while every row of its segment up to it is over the threshold;
        # joint: while the running product of the confidences is (padding: 1, multiplies nothing)
        grid = wide.new_ones((S, width))  # [S, L]
        grid[seg, col] = torch.where(joint_row, wide, over.double())
        run = grid.cumprod(1)[seg, col]  # [R]
        ordered_ok = torch.where(joint_row, run > self.threshold, run > 0.5)  # prefix: a product of 0/1
        accept = torch.where(ordered_seg[seg], ordered_ok, over)
        forced = torch.where(ordered_seg, first, forced.reshape(-1).expand(S) if forced.dim() == 0 else forced)
        return accept, forced

    def _most_confident(self, conf: torch.Tensor) -> torch.Tensor:
        """Row index of each non-empty segment's first maximum of ``conf`` [R] -> [segments] (or [] for one)."""
        if self.segments == 1:
            return conf.argmax()
        R, S = conf.shape[0], self.segments
        conf = conf.nan_to_num(nan=float("-inf"))  # a broken row must not hide the segment's maximum
        top = conf.new_full((S,), float("-inf")).scatter_reduce(0, self.segment, conf, "amax")  # [S]
        row = torch.arange(R, device=conf.device)
        at_top = torch.where(conf == top[self.segment], row, R)  # [R]
        return torch.full((S,), R, device=conf.device).scatter_reduce(0, self.segment, at_top, "amin")  # [S]
