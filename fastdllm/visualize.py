"""Pictures of block-diffusion decoding: which forward pass decoded each token.

``record(llm, prompt, **options)`` runs one generation through ``LLM.stream`` and returns the
result with a ``DecodeTrace`` (for every generated position, the forward pass that fixed it).
``plot_trace(trace, path)`` draws it with matplotlib: one row per block, one cell per position,
coloured by forward pass and labelled with the token, sub-block boundaries marked, and beside
it the number of tokens each forward decoded. ``fastdllm generate --plot FILE`` does both.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DecodeTrace:
    prompt_len: int
    token_ids: list[int]                 # generated ids, in order
    step_of: list[int]                   # for each generated id, the forward pass (1-based NFE) that decoded it
    nfe: int
    block_size: int
    small_block_size: int
    mode: str
    pieces: list[str] = field(default_factory=list)  # display text of each generated id

    @property
    def tokens_per_forward(self) -> list[int]:
        counts = [0] * self.nfe
        for s in self.step_of:
            counts[s - 1] += 1
        return counts

    def as_dict(self) -> dict:
        return {"prompt_len": self.prompt_len, "token_ids": self.token_ids, "step_of": self.step_of, "nfe": self.nfe,
                "block_size": self.block_size, "small_block_size": self.small_block_size, "mode": self.mode,
                "pieces": self.pieces}


def record(llm, prompt, **options):
    """Generate one prompt and trace it; returns ``(GenerationResult, DecodeTrace)``."""
    seqs, params = llm.prepare([prompt], **options)
    seq = seqs[0]
    decoded_at: dict[int, int] = {}
    engine, steps = llm.engine, llm.engine.steps_per_sync
    engine.steps_per_sync = 1  # the trace needs each forward's tokens apart
    try:
        for event in engine.run(seqs):
            for row in event.rows:
                for p in row.new_positions:
                    decoded_at.setdefault(p, seq.nfe)
    finally:
        engine.steps_per_sync = steps
    result = llm.result(seq)
    ids = result.token_ids
    steps = [decoded_at.get(seq.prompt_len + i, seq.nfe) for i in range(len(ids))]
    pieces = [_piece(llm.tokenizer, t) for t in ids]
    trace = DecodeTrace(seq.prompt_len, ids, steps, max(seq.nfe, max(steps, default=0)), params.block_size,
                        params.small_block_size, params.mode, pieces)
    return result, trace


def _piece(tokenizer, tid: int) -> str:
    if tokenizer is None:
        return str(tid)
    s = tokenizer.decode([tid], skip_special_tokens=False)
    return s.replace("\n", "⏎").replace("\t", "→").strip() or "·"


def plot_trace(trace: DecodeTrace, path: str | Path, title: str | None = None, max_label: int = 7) -> Path:
    """Save the decoding picture to ``path`` (PNG, SVG or PDF by extension)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import BoundaryNorm
    from matplotlib.ticker import MaxNLocator

    bs = trace.block_size
    first_block = trace.prompt_len // bs
    end = trace.prompt_len + len(trace.token_ids)
    n_rows = max(1, -(-end // bs) - first_block)
    grid = np.full((n_rows, bs), np.nan)
    labels = [["" for _ in range(bs)] for _ in range(n_rows)]
    for i, (s, piece) in enumerate(zip(trace.step_of, trace.pieces or [""] * len(trace.step_of))):
        pos = trace.prompt_len + i
        r, c = pos // bs - first_block, pos % bs
        grid[r, c] = s
        labels[r][c] = piece[:max_label]

    counts = trace.tokens_per_forward
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(min(26, 4 + 0.55 * bs), 1.6 + 0.42 * n_rows + 0.8),
                                 gridspec_kw={"width_ratios": [4, 1.2]})
    cmap = plt.get_cmap("viridis").with_extremes(bad="#e6e6e6")  # grey: prompt and unused positions
    bounds = np.arange(0.5, max(trace.nfe, 1) + 1.5)
    im = ax.imshow(grid, cmap=cmap, norm=BoundaryNorm(bounds, cmap.N) if trace.nfe <= 256 else None,
                   aspect="auto", interpolation="nearest")
    for r in range(n_rows):
        for c in range(bs):
            if labels[r][c]:
                v = grid[r, c]
                light = (v - 1) / max(1, trace.nfe - 1) > 0.6
                ax.text(c, r, labels[r][c], ha="center", va="center", fontsize=6,
                        color="black" if light else "white")
    for x in range(trace.small_block_size, bs, trace.small_block_size):
        ax.axvline(x - 0.5, color="white", lw=2)
    ax.set_yticks(range(n_rows), [f"block {first_block + r}" for r in range(n_rows)])
    ax.set_xticks(range(0, bs, trace.small_block_size))
    ax.set_xlabel("position in block (sub-block boundaries in white; grey = prompt)")
    fig.colorbar(im, ax=ax, label="forward pass that decoded the token", fraction=0.03, pad=0.01,
                 ticks=MaxNLocator(integer=True, nbins=8))
    n = len(trace.token_ids)
    ax.set_title(title or f"{trace.mode}: {n} tokens in {trace.nfe} forward passes "
                          f"(TPF {n / max(trace.nfe, 1):.2f})", loc="left")

    bx.bar(range(1, len(counts) + 1), counts, color="#3b528b", width=0.9)
    bx.xaxis.set_major_locator(MaxNLocator(integer=True))
    bx.set_xlabel("forward pass")
    bx.set_ylabel("tokens decoded")
    bx.set_title("tokens per forward", loc="left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # tokens in scripts the default font lacks are drawn as boxes
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from font")
        fig.tight_layout()
        fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
