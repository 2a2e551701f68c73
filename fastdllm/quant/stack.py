"""An int8 model's decoder layers in one C++ call per forward (``cpu_int8_stack.cpp``).

With int8 weights on fastdllm's own kernel a decode step's products take about a third of the
step; most of the rest is eager PyTorch dispatching a dozen small ops per layer (norms, rotary
embedding, the cache write, attention, gating). ``Int8Stack`` runs every layer of a forward in
C++ instead, on the same int8 kernel, with attention over each query row's own span of the
KV cache. The engine's forwards take it when the model is int8 on the CPU in float32 and every
decoder layer runs on the native kernel; the embedding, the final norm and the vocabulary
projection stay in PyTorch. ``FASTDLLM_INT8_STACK=0`` (or ``model.int8_stack_enabled = False``)
turns it off. Results equal the eager int8 path up to float rounding (tested on logits and
against the oracle, token for token).
"""

from __future__ import annotations

import os

import torch

from . import native
from .linear import Int8Linear

_PROJECTIONS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def enabled() -> bool:
    return os.environ.get("FASTDLLM_INT8_STACK", "1") != "0"


def _weights(model) -> list[torch.Tensor] | None:
    """Per layer: norm, qkv (q, scale, bias), o, norm, gate_up, down; None if a layer is not native int8."""
    none = torch.empty(0)
    out: list[torch.Tensor] = []
    for layer in model.layers:
        projections = [layer.get_submodule(n) for n in _PROJECTIONS]
        if not all(isinstance(p, Int8Linear) and p.native for p in projections):
            return None
        qkv, o, gate_up, down = ((p.qweight, p.scales, none if p.bias is None else p.bias) for p in projections)
        out += [layer.input_layernorm.weight, *qkv, *o, layer.post_attention_layernorm.weight, *gate_up, *down]
    return out


def build(model):
    """The C++ layer stack for ``model``, or None where it does not apply."""
    if not enabled() or model.quantization != "int8" or model.dtype != torch.float32 or model.device.type != "cpu":
        return None
    weights = _weights(model)
    if weights is None or not native.int8_available():
        return None
    cfg = model.cfg
    eps = {layer.input_layernorm.eps for layer in model.layers} | {l.post_attention_layernorm.eps for l in model.layers}
    if len(eps) != 1:
        return None
    return native.int8_kernel().Int8Stack(weights, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                                          float(eps.pop()), float(model.attn_scale))
