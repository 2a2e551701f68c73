"""GPTQ for the int4 layers: rounding that accounts for the inputs a layer actually sees.

Round-to-nearest (``Int4Weight.from_float``) rounds every weight on its own. GPTQ (Frantar et
al., 2022) rounds the input columns of a layer one at a time and moves each column's rounding
error onto the columns not yet rounded, weighted by the inverse of H = sum x x^T over
calibration inputs x, so that the layer's *outputs* on such inputs change least. The codes,
scales and offsets it produces are ordinary ``Int4Weight``s (groups of 32 inputs, each group's
scale and offset taken from the weights as updated so far), so the kernels, the C++ layer stack
and everything downstream are unchanged.

The calibration inputs are the model's own: ``collect_hessians`` decodes a set of prompts with
the float model, the way it will be used (block diffusion for a model with a mask token), and
accumulates H from every forward's input to each int4 layer. ``fastdllm.load(...,
quantize="int4-gptq")`` runs the whole thing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import ModelLoadError
from .formats import Int4Weight

_log = logging.getLogger(__name__)

DAMP = 0.01         # added to H's diagonal, relative to its mean: keeps the inverse well conditioned
BLOCK = 128         # columns rounded between two deferred updates of the rest of the matrix
HESSIAN_BUDGET = 8 << 30  # bytes of float32 H held at once; past that, refuse rather than exhaust memory

# What the model decodes to calibrate when no prompts are given: short chat requests of several
# kinds, arithmetic word problems among them (written for this list, not taken from any
# evaluation set).
CALIBRATION_PROMPTS = (
    "Nora has 46 stickers. She buys 27 more and gives 15 to her brother. How many stickers does she have now?",
    "A baker makes 12 trays of rolls with 24 rolls on each tray. How many rolls does he make?",
    "Sam reads 18 pages every day. How many pages does he read in 9 days?",
    "There are 96 chairs shared equally among 8 rooms. How many chairs are in each room?",
    "A ticket costs 7 dollars. Lena pays for 6 tickets with a 50 dollar bill. What change does she get?",
    "Omar is 14 years old. His aunt is 3 times as old. How old will his aunt be in 5 years?",
    "A train travels 65 km each hour for 4 hours. How far does it go?",
    "Ivy had 340 beads. She used 128 of them and then bought 75 more. How many beads does she have?",
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "Write a short poem about autumn leaves.",
    "Give three tips for learning a new language.",
    "What is the difference between a list and a tuple in Python?",
    "Summarise the plot of a story about a lost dog finding its way home.",
    "How do plants make their food?",
    "Translate 'good morning, how are you?' into Spanish.",
)


def read_prompts(source: str | Path | list | tuple | None) -> list:
    """Calibration prompts: the built-in list (None), a list of strings or of token-id lists (for a
    model without a tokenizer), or a text file with one prompt per line."""
    if source is None:
        return list(CALIBRATION_PROMPTS)
    if isinstance(source, (list, tuple)):
        prompts = []
        for p in source:
            if isinstance(p, (list, tuple)) and all(isinstance(t, int) for t in p):
                prompts += [list(p)] if p else []
            elif isinstance(p, str):
                prompts += [p] if p.strip() else []
            else:
                raise ModelLoadError(f"calibration prompts: {p!r} is neither text nor a list of token ids")
    else:
        path = Path(source)
        if not path.is_file():
            raise ModelLoadError(f"calibration prompts: {path} is not a file (one prompt per line)")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ModelLoadError("calibration prompts: none given (the file or list is empty)")
    return prompts


@torch.no_grad()
def gptq_int4(weight: torch.Tensor, hessian: torch.Tensor, group_size: int = 32, damp: float = DAMP,
              block: int = BLOCK) -> Int4Weight:
    """Round ``weight`` [N, K] to int4 (groups of ``group_size`` inputs) with GPTQ, given H [K, K].

    With H a multiple of the identity this is round-to-nearest (``Int4Weight.from_float``).
    """
    N, K = weight.shape
    if K % group_size:
        raise ValueError(f"int4: input size {K} is not a multiple of the group size {group_size}")
    if hessian.shape != (K, K):
        raise ValueError(f"GPTQ: the Hessian is {tuple(hessian.shape)}, expected {(K, K)}")
    block = max(group_size, block // group_size * group_size)  # a group never straddles two blocks
    W = weight.detach().to(device="cpu", dtype=torch.float64).clone()  # [N, K]
    H = hessian.detach().to(device="cpu", dtype=torch.float64).clone()  # [K, K]
    dead = H.diagonal() == 0  # inputs never seen: their weights cannot matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(damp * H.diagonal().mean())
    # the upper Cholesky factor of H^-1: row i holds how column i's error spreads to columns > i
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)  # [K, K]
    G = K // group_size
    codes = torch.empty(N, K, dtype=torch.uint8)
    scale = torch.empty(N, G, dtype=torch.float64)
    low = torch.empty(N, G, dtype=torch.float64)
    for b0 in range(0, K, block):
        b1 = min(b0 + block, K)
        Wb, Ub = W[:, b0:b1], U[b0:b1, b0:b1]  # views: Wb is updated in place
        errors = torch.empty(N, b1 - b0, dtype=torch.float64)
        for j in range(b1 - b0):
            i = b0 + j
            g = i // group_size
            if i % group_size == 0:  # the group's range from its columns as they stand now
                cols = Wb[:, j:j + group_size]
                lo, hi = cols.amin(1), cols.amax(1)
                scale[:, g] = ((hi - lo) / 15).clamp(min=1e-12)
                low[:, g] = lo
            s, t = scale[:, g], low[:, g]
            c = torch.round((Wb[:, j] - t) / s).clamp(0, 15)  # [N]
            codes[:, i] = c.to(torch.uint8)
            err = (Wb[:, j] - (c * s + t)) / Ub[j, j]
            Wb[:, j + 1:] -= err[:, None] * Ub[j, j + 1:][None, :]
            errors[:, j] = err
        W[:, b1:] -= errors @ U[b0:b1, b1:]
    # Int4Weight holds w = (q - 8) * scale + zero, so zero = low + 8 * scale
    return Int4Weight(codes, scale.float(), (low + 8 * scale).float())


class HessianCollector:
    """Forward pre-hooks accumulating H = sum x x^T (float32) of the inputs to the named linear layers."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        self.hessians: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        need = sum(model.get_submodule(n).in_features ** 2 * 4 for n in names)
        if need > HESSIAN_BUDGET:
            raise ModelLoadError(f"GPTQ would hold {need / 2**30:.1f} GiB of calibration statistics at once "
                                 f"(more than {HESSIAN_BUDGET / 2**30:.0f} GiB); use --quantize int4 for this model")
        self._handles = [model.get_submodule(n).register_forward_pre_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def accumulate(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # [rows, K]
            h = x.T @ x  # [K, K]
            if name in self.hessians:
                self.hessians[name] += h
                self.rows[name] += x.shape[0]
            else:
                self.hessians[name], self.rows[name] = h, x.shape[0]
        return accumulate

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def collect_hessians(llm, names: list[str], prompts: list, max_new_tokens: int = 128,
                     batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Decode ``prompts`` with ``llm`` (float weights) and return H per layer in ``names``."""
    from tqdm.auto import tqdm

    collector = HessianCollector(llm.model, names)
    try:
        with tqdm(total=len(prompts), desc="GPTQ calibration", unit="prompt", disable=None) as bar:
            for i in range(0, len(prompts), batch_size):
                chunk = prompts[i:i + batch_size]
                llm.generate(chunk, max_new_tokens=max_new_tokens)
                bar.update(len(chunk))
    finally:
        collector.remove()
    missing = [n for n in names if n not in collector.hessians]
    if missing:
        raise ModelLoadError(f"GPTQ calibration never reached {missing[0]} (no forward ran)")
    _log.info("GPTQ calibration: %d prompts, %d input rows per layer", len(prompts), collector.rows[names[0]])
    return collector.hessians


def gptq_weights(llm, prompts: list, group_size: int = 32, max_new_tokens: int = 128) -> dict[str, Int4Weight]:
    """GPTQ int4 weights for every layer that int4 quantises from floats (``layer_mode``), by name."""
    from . import layer_mode, linear_names
    from .linear import int4_fits

    if llm.tokenizer is None and any(isinstance(p, str) for p in prompts):
        raise ModelLoadError("GPTQ calibration: this model has no tokenizer; give the prompts as token-id lists")
    model = llm.model
    names = [n for n in linear_names(model.cfg.num_hidden_layers)
             if layer_mode(n, "int4") == "int4"
             and int4_fits(tuple(model.get_submodule(n).weight.shape), group_size, model.device)]
    hessians = collect_hessians(llm, names, prompts, max_new_tokens)
    return {n: gptq_int4(model.get_submodule(n).weight, hessians.pop(n), group_size) for n in names}
