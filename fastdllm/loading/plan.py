"""What ``fastdllm.load`` will do, decided before anything is loaded: the load plan.

Which file, which dtype and which quantisation a load ends up with depends on the device, the
hardware's bfloat16, what the file holds (a GGUF with 4-bit codes), an adapter and GPTQ's
calibration; these rules used to be spread through ``api.load``. ``plan_load`` applies all of
them in one place and returns a ``LoadPlan``; ``api.load`` only executes it. Per-layer choices
inside one quantisation (which layers stay int8 under int4) are the quantisation's own
(``quant.layer_mode``), not load policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import ModelLoadError

if TYPE_CHECKING:
    from . import Checkpoint

log = logging.getLogger("fastdllm.quant")


@dataclass(frozen=True)
class LoadPlan:
    source: str | Path               # what to open: the model as given, or its local path once resolved
    revision: str | None
    device: torch.device
    dtype: torch.dtype               # the dtype the model runs in (after the hardware policy)
    quantize: str | None             # what the checkpoint is built with: None, "int8" or "int4"
    adapter: str | None = None       # a LoRA adapter merged into the float32 base before ``quantize``
    gptq: bool = False               # built in float32 (quantize None), then rounded to int4 with GPTQ
    calibration: list[str] | None = None  # GPTQ's prompts
    use_native: bool = True          # quantised layers may run on fastdllm's native kernels (``RuntimeOptions``)
    activations: str = "float32"     # the int8 layers' activations: "int8" for quantize="int8-a8" / "int4-a8"

    @property
    def load_dtype(self) -> torch.dtype:
        """The dtype the checkpoint is read in (GPTQ calibrates in float32, then casts)."""
        return torch.float32 if self.gptq else self.dtype


def _resolve_q4(model, revision) -> tuple[Path, bool]:
    """``model`` as a local path (resolved once: a hub id is not fetched twice), and whether it is a
    GGUF file holding 4-bit codes (what int4 keeps as they are)."""
    from .gguf import holds_q4
    from .hub import resolve

    path = resolve(model, revision)
    return path, path.suffix == ".gguf" and holds_q4(path)


def plan_load(model: str | None, dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu",
              revision: str | None = None, adapter: str | None = None, quantize: str | None = "auto",
              calibration: str | list[str] | None = None, use_native: bool = True) -> LoadPlan:
    """The plan for ``fastdllm.load``'s arguments (see its docstring for the rules); ModelLoadError
    for arguments that cannot work, before anything is loaded."""
    from ..kernels.precision import resolve_dtype
    from ..quant import parse_quantize, split_activations
    from . import parse_device, parse_dtype

    dev = parse_device(device)
    activations = "float32"
    if isinstance(quantize, str):
        quantize, activations = split_activations(quantize)
        if activations == "int8" and dev.type != "cpu":
            raise ModelLoadError(f"int8 activations run on fastdllm's CPU kernels, not on {dev}: use quantize="
                                 f"{quantize!r} there")
    auto = isinstance(quantize, str) and quantize.lower() == "auto"
    dt, mode = resolve_dtype(parse_dtype(dtype, dev), dev), None if auto else parse_quantize(quantize)
    if model is None:
        from ..models import DEFAULT_MODEL

        model = DEFAULT_MODEL
    if auto:
        model, mode = _auto_quantize(model, revision, adapter, dev, dt, use_native)
    gptq, prompts = mode == "int4-gptq", None
    if gptq:
        from ..quant.gptq import read_prompts

        prompts = read_prompts(calibration)  # a bad file fails before any loading
        model, q4 = _resolve_q4(model, revision)
        mode = None  # built in float32, quantised after calibration
        if adapter is None and q4:
            # rounding the file's own 4-bit values again can only move further from its float weights
            log.warning("%s already holds 4-bit codes: int4-gptq keeps them, as int4 does", model.name)
            gptq, prompts, mode = False, None, "int4"
    elif calibration is not None:
        raise ModelLoadError("calibration prompts apply only to quantize='int4-gptq'")
    return LoadPlan(model, revision, dev, dt, mode, adapter, gptq, prompts, use_native, activations)


def _auto_quantize(model, revision, adapter, dev: torch.device, dt: torch.dtype, use_native: bool = True):
    """``quantize="auto"``: (the model, resolved to a path where it had to be opened; "int4" for a GGUF
    file holding 4-bit codes that fastdllm's CPU kernels run as they are, else None)."""
    if adapter is not None or dev.type != "cpu" or dt != torch.float32:
        return model, None
    from ..kernels import native

    path, q4 = _resolve_q4(model, revision)
    if not q4 or not use_native or not native.available():
        return path, None
    log.info("%s holds 4-bit codes: loaded as int4 (quantize='none' to dequantise it to float32)", path.name)
    return path, "int4"


def load_planned(plan: LoadPlan) -> Checkpoint:
    """The checkpoint ``plan`` describes, the adapter merged (GPTQ's rounding comes after: it decodes
    with the loaded model, see ``fastdllm.load``)."""
    from . import load_checkpoint

    if plan.adapter is not None:
        from .adapter import load_with_adapter

        base = load_checkpoint(plan.source, dtype="float32", device=plan.device, revision=plan.revision)
        return load_with_adapter(base, plan.adapter, merge=True, dtype=plan.load_dtype, device=plan.device,
                                 quantize=plan.quantize, use_native=plan.use_native)
    return load_checkpoint(plan.source, dtype=plan.load_dtype, device=plan.device, revision=plan.revision,
                           quantize=plan.quantize, use_native=plan.use_native)
