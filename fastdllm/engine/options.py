"""The decoding options every front-end takes, with their defaults and checks written once.

The Python API (``LLM.generate``), the CLI (``fastdllm generate``), the server's request bodies,
the denoising page and the benchmark all decode with the same knobs; before this module each
wrote its own defaults (block 32, sub-block 8, threshold 0.9...) and its own checks, and they
drifted. Now:

- ``DecodeOptions`` owns every default (its field defaults) and the model-independent checks
  (``validate``: an ``InvalidRequestError`` whose ``param`` names the field). ``BOUNDS`` holds
  the numeric ranges; the server's pydantic models take their OpenAPI ranges from it.
- ``merge(*layers)`` is how a front-end builds one: every layer is a mapping where None means
  "not given", and a field takes its value from the first layer that gives it, so a front-end
  passes ``merge(request, server_or_cli_defaults)`` and the schema's defaults come last.
- ``resolve(options, model)`` is the model-dependent step (as vLLM's ``SamplingParams.verify``):
  block sizes, threshold and accept rule from the checkpoint (its ``config.json``), the sub-block
  dividing the block, a mask token for diffusion, stop ids in the vocabulary. It is the only place the engine's ``DecodeParams`` are
  built. ``context_cap`` is the longest sequence the model holds under those params.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import torch

from ..errors import InvalidRequestError, UnsupportedModelError
from .acceptance import DEFAULT_RULE, RULES
from .sampling import SamplingParams, make_sampler
from .params import DecodeParams

# what a checkpoint without bd_size / small_block_size / threshold / acceptance decodes with
# (Fast-dLLM v2's values)
FALLBACK_BLOCK_SIZE = 32
FALLBACK_SMALL_BLOCK_SIZE = 8
FALLBACK_THRESHOLD = 0.9
MODES = ("diffusion", "ar")


@dataclass(frozen=True)
class Bound:
    """A numeric range, in pydantic's terms (``ge``/``gt``/``le``), and how to say it."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    integer: bool = False
    finite: bool = False
    also: str = ""                     # a condition the range does not show, said with it

    def pydantic(self) -> dict[str, float]:
        """``Field(...)`` keyword arguments for this range."""
        return {k: v for k in ("ge", "gt", "le") if (v := getattr(self, k)) is not None}

    def holds(self, v) -> bool:
        if self.integer and (not isinstance(v, int) or isinstance(v, bool)):
            return False
        if not self.integer and (isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v)):
            return False
        if self.finite and math.isinf(v):
            return False
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le))

    def text(self) -> str:
        return self._range_text() + (f" and {self.also}" if self.also else "")

    def _range_text(self) -> str:
        def n(x):
            return f"{x:g}"
        if self.le is not None:
            lo = f"[{n(self.ge)}" if self.ge is not None else f"({n(self.gt)}"
            return f"must be in {lo}, {n(self.le)}]"
        if self.gt == 0:
            return "must be positive"
        if self.gt is not None:
            return f"must be > {n(self.gt)}"
        return f"must be {'a finite number ' if self.finite else ''}>= {n(self.ge)}"


BOUNDS: dict[str, Bound] = {
    "max_new_tokens": Bound(ge=0, integer=True),
    "threshold": Bound(ge=0.0, le=1.0),
    "block_size": Bound(gt=0, integer=True),
    "small_block_size": Bound(gt=0, integer=True, also="divide block_size"),
    "temperature": Bound(ge=0.0, finite=True),
    "top_p": Bound(gt=0.0, le=1.0),
    "top_k": Bound(ge=0, integer=True),
    "mask_token_id": Bound(ge=0, integer=True),
}


def _bad(name: str, problem: str) -> InvalidRequestError:
    return InvalidRequestError(f"{name} {problem}", param=name)


@dataclass
class DecodeOptions:
    """How to decode one request. None where the checkpoint decides (see ``resolve``)."""

    max_new_tokens: int = 256          # cut to the context
    mode: str | None = None            # "diffusion" or "ar"; None: diffusion for block-diffusion checkpoints
    threshold: float | None = None     # confidence a masked token needs; None: the checkpoint's, else 0.9
    acceptance: str | None = None      # accept rule (``acceptance.RULES``); None: the checkpoint's, else "threshold"
    block_size: int | None = None      # None: the checkpoint's bd_size, else FALLBACK_BLOCK_SIZE
    small_block_size: int | None = None  # None: the checkpoint's small_block_size, else FALLBACK_SMALL_BLOCK_SIZE
    use_block_cache: bool = False      # reuse the block's KV across its sub-blocks
    temperature: float = 0.0           # 0: greedy
    top_p: float = 1.0
    top_k: int = 0                     # 0: the whole vocabulary
    seed: int | None = None
    stop: list[str] = field(default_factory=list)       # stop strings (a single string is accepted)
    stop_token_ids: list[int] | None = None             # None: the checkpoint's EOS ids
    mask_token_id: int | None = None                    # None: the checkpoint's mask token

    def __post_init__(self):
        # one shape per field, whatever the front-end sent: empty stop strings never match, so drop them
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop] if self.stop else []
        else:
            self.stop = [s for s in self.stop if s != ""]
        if self.stop_token_ids is not None and not isinstance(self.stop_token_ids, (str, bytes)):
            self.stop_token_ids = list(self.stop_token_ids)

    def validate(self) -> DecodeOptions:
        """The model-independent checks; raises ``InvalidRequestError`` naming the field. Returns self."""
        if self.mode is not None and self.mode not in MODES:
            raise _bad("mode", f"must be 'diffusion' or 'ar', got {self.mode!r}")
        if self.acceptance is not None and self.acceptance not in RULES:
            raise _bad("acceptance", f"must be one of {', '.join(repr(r) for r in RULES)}, got {self.acceptance!r}")
        for name, bound in BOUNDS.items():
            v = getattr(self, name)
            if v is None and name in ("block_size", "small_block_size", "mask_token_id", "threshold"):
                continue
            if bound.integer and (not isinstance(v, int) or isinstance(v, bool)):
                raise _bad(name, f"must be an integer, got {v!r}")
            if not bound.holds(v):
                raise _bad(name, f"{bound.text()}, got {v!r}" if isinstance(v, str) else f"{bound.text()}, got {v}")
        if self.block_size is not None and self.small_block_size is not None and self.block_size % self.small_block_size:
            raise _bad("small_block_size", f"({self.small_block_size}) must divide block_size ({self.block_size})")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise _bad("seed", f"must be an integer, got {self.seed!r}")
        if not all(isinstance(s, str) for s in self.stop):
            raise _bad("stop", "must be a string or a list of strings")
        if self.stop_token_ids is not None:
            if not isinstance(self.stop_token_ids, list):
                raise _bad("stop_token_ids", f"must be a list of token ids, got {self.stop_token_ids!r}")
            for t in self.stop_token_ids:
                if not isinstance(t, int) or isinstance(t, bool) or t < 0:
                    raise _bad("stop_token_ids", f"must hold token ids >= 0, got {t}")
        return self


FIELDS = tuple(f.name for f in fields(DecodeOptions))
DEFAULTS = DecodeOptions()


def merge(*layers: Mapping[str, Any] | None) -> DecodeOptions:
    """One ``DecodeOptions`` from layers of given values, first layer first (request, then the
    server's or CLI's defaults); None means "not given" and the schema's default fills what no
    layer gives. TypeError for an unknown field (a misspelt keyword)."""
    picked: dict[str, Any] = {}
    for layer in layers:
        unknown = set(layer or {}) - set(FIELDS)
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        for k, v in (layer or {}).items():
            if v is not None and k not in picked:
                picked[k] = v
    return DecodeOptions(**picked)


@dataclass(frozen=True)
class ModelFacts:
    """What ``resolve`` needs to know about the loaded model (``LLM.facts``)."""

    is_block_diffusion: bool
    bd_size: int | None
    small_block_size: int | None
    vocab_size: int
    max_position_embeddings: int
    mask_token_id: int | None            # the checkpoint's (None: it has none)
    eos_token_ids: tuple[int, ...]
    has_tokenizer: bool
    device: torch.device | str = "cpu"
    threshold: float | None = None       # the checkpoint's decoding threshold (config ``threshold``)
    acceptance: str | None = None        # the checkpoint's accept rule (config ``acceptance``)


def checkpoint_block_sizes(bd_size: int | None, small_block_size: int | None) -> tuple[int, int]:
    """The block and sub-block sizes a checkpoint decodes with when a request gives none."""
    return bd_size or FALLBACK_BLOCK_SIZE, small_block_size or FALLBACK_SMALL_BLOCK_SIZE


def checkpoint_acceptance(threshold: float | None, acceptance: str | None) -> tuple[float, str]:
    """The threshold and accept rule a checkpoint decodes with when a request gives none
    (UnsupportedModelError for an accept rule this version does not know)."""
    if acceptance is not None and acceptance not in RULES:
        raise UnsupportedModelError(f"config.json: acceptance must be one of {', '.join(RULES)}, got {acceptance!r}")
    return (FALLBACK_THRESHOLD if threshold is None else threshold), acceptance or DEFAULT_RULE


def block_sizes(opts: DecodeOptions, bd_size: int | None, small_block_size: int | None) -> tuple[int, int]:
    """The request's block and sub-block sizes, filled from the checkpoint's; InvalidRequestError
    unless the sub-block divides the block."""
    ckpt_bs, ckpt_sbs = checkpoint_block_sizes(bd_size, small_block_size)
    bs = opts.block_size or ckpt_bs
    sbs = opts.small_block_size if opts.small_block_size is not None else ckpt_sbs
    if bs <= 0 or sbs <= 0:
        raise _bad("small_block_size", f"({sbs}) must be positive and divide block_size ({bs})")
    if bs % sbs:
        if opts.block_size is None:
            raise _bad("small_block_size", f"({sbs}) must divide the block size ({bs}, the checkpoint's bd_size; "
                                           "set it with block_size)")
        raise _bad("small_block_size", f"({sbs}, the checkpoint's) must divide block_size ({bs})")
    return bs, sbs


def resolve(opts: DecodeOptions, model: ModelFacts) -> DecodeParams:
    """The engine's ``DecodeParams`` for ``opts`` on ``model`` (validated); InvalidRequestError naming the field."""
    opts.validate()
    mode = opts.mode or ("diffusion" if model.is_block_diffusion else "ar")
    bs, sbs = block_sizes(opts, model.bd_size, model.small_block_size)
    mask_id = opts.mask_token_id if opts.mask_token_id is not None else model.mask_token_id
    if mode == "diffusion" and mask_id is None:
        raise InvalidRequestError("block-diffusion decoding needs a mask token: pass mask_token_id "
                                  "(this checkpoint defines none)", param="mask_token_id")
    if mask_id is not None and not 0 <= mask_id < model.vocab_size:
        raise _bad("mask_token_id", f"{mask_id} is outside the vocabulary")
    if opts.stop_token_ids is None:
        stop_ids = model.eos_token_ids
    else:
        stop_ids = opts.stop_token_ids
        for t in stop_ids:
            if t >= model.vocab_size:
                raise _bad("stop_token_ids", f"holds {t}, outside the vocabulary (size {model.vocab_size})")
    if opts.stop and not model.has_tokenizer:
        raise _bad("stop", "strings need a tokenizer")
    sampler = make_sampler(SamplingParams(opts.temperature, opts.top_p, opts.top_k, opts.seed), mask_id, model.device)
    threshold, acceptance = checkpoint_acceptance(model.threshold, model.acceptance)
    if opts.threshold is not None:
        threshold = opts.threshold
    return DecodeParams(mode, sampler, frozenset(stop_ids), bs, sbs, threshold, opts.use_block_cache, mask_id,
                        acceptance=opts.acceptance or acceptance)


def context_cap(params: DecodeParams, max_position_embeddings: int) -> int:
    """The longest prompt plus output the model holds: diffusion writes whole blocks."""
    if params.mode == "diffusion":
        return max_position_embeddings // params.block_size * params.block_size
    return max_position_embeddings
