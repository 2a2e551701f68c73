"""Weight-only quantisation for inference: int8 per channel or int4 per group of 32 inputs.

``quantize="int8"`` or ``"int4"`` in ``fastdllm.load`` (``--quantize`` on the command line)
replaces every linear layer of the decoder and the vocabulary projection with a quantised one
(``linear``); embeddings, norms, attention and the KV cache stay in the model's dtype. With
int4, the vocabulary projection is quantised to int8: it is the layer most sensitive to
rounding, and llama.cpp's 4-bit files also keep it at 6-8 bits. Made from float weights, int4
also keeps the fused query/key/value projection and the MLP's down projection at int8 (as
llama.cpp's Q4_K_M keeps attn_v and ffn_down at 6 bits): on the word-problem model, measured as
the KL divergence of the next-token distribution from float32 on training-style inputs (not
the evaluation problems), int4 everywhere but the head gives 0.0087, int4 in the query/key/value
projection alone 0.0058 of it, the policy here 0.0031. Int4 codes a checkpoint already holds
(GGUF Q4_0 / Q4_1) are kept as they are.
``"int4-gptq"`` is int4 with GPTQ rounding calibrated on the model's own decoding (``gptq``);
the model reports ``quantization == "int4"`` (same layers, same kernels).
Formats in ``formats``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelLoadError
from .formats import Int4Weight, Int8Weight, QuantizedWeight, as_float, cat_rows
from .linear import ACTIVATIONS, Int4Linear, Int8Linear, QuantLinear, quantized_linear

MODES = ("int8", "int4", "int4-gptq")
LAYER_LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
GROUP_SIZE = 32
INT8_UNDER_INT4 = ("self_attn.qkv_proj", "mlp.down_proj")  # made from floats, int4 keeps these at int8

__all__ = ["A8_MODES", "MODES", "Int4Linear", "Int4Weight", "Int8Linear", "Int8Weight", "QuantLinear",
           "QuantizedWeight", "as_float", "cat_rows", "linear_names", "parse_quantize", "parse_quantized_list",
           "quantize_model", "quantized_linear", "layer_mode", "set_activations", "split_activations", "load_path"]


def parse_quantize(mode: str | None) -> str | None:
    """None (or "none") for no quantisation, else "int8", "int4" or "int4-gptq"; ModelLoadError otherwise."""
    if mode is None or str(mode).lower() in ("", "none", "no", "off"):
        return None
    key = str(mode).lower()
    if key not in MODES:
        raise ModelLoadError(f"unsupported quantisation {mode!r}: use int8, int4 or int4-gptq (or none)")
    return key


def parse_quantized_list(spec: str) -> list[str]:
    """A comma-separated list of quantisations ("int8,int4"), each one of ``MODES`` (not none);
    ModelLoadError otherwise. What benchmarks comparing paths against float32 take."""
    names = [p.strip() for p in spec.split(",") if p.strip()]
    for name in names:
        if parse_quantize(name) is None:
            raise ModelLoadError(f"{name!r} is not a quantisation: use int8, int4 or int4-gptq")
    return [parse_quantize(n) for n in names]


def linear_names(num_layers: int) -> list[str]:
    """The model's quantisable linear layers, as module paths."""
    return [f"layers.{i}.{n}" for i in range(num_layers) for n in LAYER_LINEARS] + ["lm_head"]


def layer_mode(name: str, mode: str, holds_int4: bool = False) -> str:
    """The quantisation of layer ``name`` under ``mode``: under int4, the vocabulary projection is
    int8, and so are the query/key/value and the MLP's down projections unless the checkpoint
    holds int4 codes for them (``holds_int4``)."""
    if mode == "int4" and (name == "lm_head" or (name.endswith(INT8_UNDER_INT4) and not holds_int4)):
        return "int8"
    return mode


@torch.no_grad()
def quantize_model(model: nn.Module, mode: str, dtype: torch.dtype | None = None,
                   weights: dict[str, QuantizedWeight] | None = None, use_native: bool = True) -> nn.Module:
    """Quantise a built model in place from its float weights; other parameters are cast to ``dtype``.

    Quantise from float32 weights where possible: the weights are read as they are. ``weights``:
    layers already quantised (say by ``gptq.gptq_weights``), by name, used instead of rounding.
    ``use_native``: False keeps the layers off fastdllm's native kernels.
    """
    mode = parse_quantize(mode)
    if mode not in ("int8", "int4"):
        raise ModelLoadError("quantize_model needs a quantisation: int8 or int4 (GPTQ: fastdllm.load)")
    weights = weights or {}
    dtype = dtype or model.dtype
    device = model.embed_tokens.weight.device
    for name in linear_names(model.cfg.num_hidden_layers):
        old = model.get_submodule(name)
        weight = weights.get(name, old.weight.detach())
        model.set_submodule(name, quantized_linear(weight, old.bias, layer_mode(name, mode), dtype, device, GROUP_SIZE,
                                                         use_native))
    for m in model.modules():  # only the float parameters: quantised buffers and the rotary table keep theirs
        for p in m.parameters(recurse=False):
            p.data = p.data.to(dtype)
    model.quantization = mode
    return model


def set_activations(model: nn.Module, activations: str) -> int:
    """Run the model's int8 layers with ``activations`` "int8" (W8A8: each input row quantised per
    block of 32 inputs, integer products; ``native.int8a8_linear``) or "float32" (weight-only, the
    default). Only layers on fastdllm's native CPU kernel switch (int4 layers keep float
    activations). Returns how many layers run with ``activations`` now; the C++ layer stack is
    rebuilt on the next forward."""
    if activations not in ACTIVATIONS:
        raise ModelLoadError(f"activations must be one of {ACTIVATIONS}, not {activations!r}")
    switched = sum(m.set_activations(activations) for m in model.modules() if isinstance(m, Int8Linear))
    model.weights_changed()  # a native layer stack holds the packed weights it was built with
    return switched


A8_SUFFIX = "-a8"  # "int8-a8": quantize="int8" with int8 activations (``fastdllm.load``, benchmark paths)
A8_MODES = ("int8-a8", "int4-a8")  # int4-a8: int4 with its int8 layers on int8 activations


def split_activations(mode: str) -> tuple[str, str]:
    """A ``quantize`` value -> (the weights' quantisation, the int8 layers' activations): "int8-a8"
    -> ("int8", "int8"); anything else -> (itself, "float32"). ModelLoadError for a suffix on a mode
    that has no int8 layers to switch."""
    key = str(mode).lower()
    if not key.endswith(A8_SUFFIX):
        return mode, "float32"
    if key not in A8_MODES:
        raise ModelLoadError(f"unsupported quantisation {mode!r}: int8 activations ({A8_SUFFIX}) go with "
                             f"{' or '.join(A8_MODES)}")
    return key[: -len(A8_SUFFIX)], "int8"


def load_path(path: str, model: str | None = None, **kw):
    """``fastdllm.load(model, quantize=...)`` for a benchmark path: "float32", a quantisation, or one
    with ``A8_SUFFIX`` (its int8 layers then take int8 activations)."""
    import fastdllm

    base = path[: -len(A8_SUFFIX)] if path.endswith(A8_SUFFIX) else path
    if (base != "float32" and parse_quantize(base) is None) or (base != path and path not in A8_MODES):
        raise ModelLoadError(f"{path!r} is not a path: float32 or a quantisation, or one of {', '.join(A8_MODES)}")
    return fastdllm.load(model, quantize=None if path == "float32" else path, **kw)
