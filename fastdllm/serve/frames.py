"""Block frames for the denoising view: the current block of one sequence after a forward pass.

For a job that asked for them (``POST /v1/denoise``), the batcher's worker turns each
``RowUpdate`` of the engine into a ``Frame``: the block's token ids (None where still masked),
the forward pass that decoded each cell, the cells this forward decoded, and the sub-block the
next forward works on. ``FrameTracker`` remembers the forward numbers of the current block
only. In AR mode there is no block: the frame is the window of ``block_size`` positions that
holds the newest token, so the page draws both modes the same way.

Frames coalesce like text deltas (``coalesce``): a later frame of the same block replaces the
earlier one (each cell keeps the forward that decoded it, so only intermediate pictures are
lost, never a colour), a frame of another block is appended, so every block's last state
reaches the client. What a request holds is at most one frame per block of its output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Frame:
    forward: int                   # the sequence's forward passes so far (NFE; the whole prefill is one)
    block_start: int               # absolute position of the block's first cell
    ids: list[int | None]          # token ids, None where still masked (or not decoded yet, in AR mode)
    decoded_at: list[int | None]   # the forward that decoded each cell (None: masked, or the prompt)
    new: list[int]                 # cells decoded since the previous frame that was sent
    prompt_cells: int              # leading cells holding the end of the prompt
    active: int | None             # first cell of the sub-block the next forward decodes (None: block full)
    tokens: int                    # committed output tokens so far
    seconds: float                 # since the sequence entered the batch

    def merged(self, later: Frame) -> Frame:
        """``later``, also flagging the cells this frame flagged as new (same block)."""
        return replace(later, new=sorted(set(self.new) | set(later.new)))


def coalesce(frames: list[Frame], later: list[Frame]) -> list[Frame]:
    """``frames`` followed by ``later``, one frame per block (see the module docstring)."""
    out = list(frames)
    for f in later:
        if out and out[-1].block_start == f.block_start:
            out[-1] = out[-1].merged(f)
        else:
            out.append(f)
    return out


class FrameTracker:
    """Per sequence, on the engine thread: which forward decoded each cell of the current block."""

    def __init__(self) -> None:
        self._start: int | None = None
        self._at: list[int | None] = []

    def update(self, row, seq) -> Frame | None:
        """The frame after ``row`` (an ``engine.RowUpdate`` of ``seq``); None when no forward of
        ``seq`` ran (a prompt chunk before the last, or a sequence that ended without one)."""
        if row.phase == "ended" or seq.prefill_plans or seq.nfe == 0:
            return None
        p = seq.params
        bs = p.block_size
        if p.mode == "diffusion" and row.block:
            start = row.block_start
            ids = [None if t == p.mask_token_id else t for t in row.block]
        else:  # AR: the aligned window of block_size positions holding the newest token
            last = row.new_positions[-1] if row.new_positions else seq.prompt_len + len(seq.output) - 1
            start = max(0, last) // bs * bs
            ids = [_token_at(seq, i) for i in range(start, start + bs)]
        if start != self._start:
            self._start, self._at = start, [None] * len(ids)
        new = []
        for pos in row.new_positions:
            i = pos - start
            if 0 <= i < len(ids):
                new.append(i)
                if self._at[i] is None:
                    self._at[i] = seq.nfe
        prompt_cells = max(0, min(len(ids), seq.prompt_len - start))
        masked = next((i for i in range(prompt_cells, len(ids)) if ids[i] is None), None)
        active = masked
        if masked is not None and p.mode == "diffusion":
            active = masked // p.small_block_size * p.small_block_size
        return Frame(seq.nfe, start, ids, list(self._at), new, prompt_cells, active, len(seq.output), seq.seconds)


def _token_at(seq, pos: int) -> int | None:
    if pos < seq.prompt_len:
        return seq.prompt[pos]
    j = pos - seq.prompt_len
    return seq.output[j] if j < len(seq.output) else None
