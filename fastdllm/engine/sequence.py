"""Per-request decoding state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class ForwardPlan:
    """What one sequence feeds to the next packed forward, and which outputs it reads."""

    tokens: list[int]
    write_pos: int                 # absolute position of tokens[0]
    kv_end: int                    # attend to positions [0, kv_end)
    logit_rows: list[int]          # rows of ``tokens`` whose logits are read
    mask: str = "full"             # "full", "causal" or "block_causal"
    kind: str = "decode"           # "prefill", "decode" or "commit"
    block_size: int = 0            # for the block-causal mask
    threshold: float = 1.0         # read rows more confident than this are accepted; the most confident one always is
    targets: list[int] = field(default_factory=list)  # block indices the read logits decide


@dataclass(eq=False)  # compared by identity: the scheduler finds sequences in its queues
class Sequence:
    index: int                     # position of the request in the caller's list
    prompt: list[int]
    max_new_tokens: int
    limit: int                     # absolute position bound of the output (the last block may decode past it)
    output: list[int] = field(default_factory=list)   # committed generated ids
    finished: bool = False
    finish_reason: str | None = None
    nfe: int = 0
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    # block-diffusion state
    block_start: int = 0
    block: list[int] = field(default_factory=list)
    gen_from: int = 0              # first generated index inside the block
    emitted: int = 0               # block indices < emitted are in ``output`` (or prompt)
    block_cache_fresh: bool = False
    # text state (stop strings, streaming)
    detok: object | None = None
    # decoding parameters of this sequence (None: the ones ``Engine.run`` is given)
    params: object | None = None
    # scheduling state (engine/scheduler.py), all cleared or dropped when the sequence ends
    planner: object | None = None  # step planner for ``params``
    kv_need: int = 0               # KV positions it reserves while running (the planner's capacity)
    kv_base: int | None = None     # start of its span of the KV pool while running
    prefill_plans: list[ForwardPlan] = field(default_factory=list)  # prompt chunks not yet fed
    group: object | None = None    # shared by the sequences of a request that must run alone
    overtaken: int = 0             # later sequences admitted while this one waited
    cancel_requested: bool = False
    owner: object | None = None    # the caller's handle (the server's job), for routing updates

    @property
    def prompt_len(self) -> int:
        return len(self.prompt)

    def finish(self, reason: str) -> None:
        self.finished = True
        self.finish_reason = reason
        self.ended = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started
