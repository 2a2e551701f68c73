"""A quantised model's decoder layers in one C++ call per forward (``cpu_stack.cpp``).

With int8 or int4 weights on fastdllm's own kernels a decode step's products take about a third
of the eager step; most of the rest is PyTorch dispatching a dozen small ops per layer (norms,
rotary embedding, the cache write, attention, gating). ``QuantStack`` runs every layer of a
forward in C++ instead, on the same kernels, with attention over each query row's own span of the
KV cache. The engine's native-stack backend (``fastdllm.engine.backend``) takes it when the
model is int8 or int4 on the CPU in float32 and every decoder projection runs on a native
kernel; the rotary embedding's cos and sin and the final norm are computed there too, so the forward's only PyTorch operators are the embedding and
the vocabulary projection. Greedy AR runs (``Engine.steps_per_sync``) go further:
``QuantStack.greedy_run`` does the embedding, the layers, the vocabulary projection and the
greedy pick of several forwards in one call. ``RuntimeOptions(quant_stack=False)``
(``FASTDLLM_QUANT_STACK=0``) turns it off. Results equal the eager quantised path up to
float rounding (tested on logits and cache contents; the engine against the oracle).
"""

from __future__ import annotations

import torch

from . import native

TABLE_POSITIONS = 32768  # cos and sin are tabulated up to here (16 MB at head size 64); computed beyond
_PROJECTIONS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def on_native_kernel(p) -> bool:
    """Whether layer ``p`` is an int8 or int4 layer on a native kernel (``fastdllm.quant``'s layers say
    so by ``format`` and ``native``; read by name so the kernels need not import the formats)."""
    return getattr(p, "format", None) in ("int8", "int4") and bool(getattr(p, "native", False))


def _tensors(p) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed weights, scales, bias) of a layer on a native kernel, as the C++ stack takes them."""
    bias = torch.empty(0) if p.bias is None else p.bias
    return (p.qweight, p.scales, bias) if p.format == "int8" else (p.qweight, p.scale_zero, bias)


def _weights(model) -> list[torch.Tensor] | None:
    """Per layer: norm, qkv (weights, scales, bias), o, norm, gate_up, down; None if a layer is not on
    a native kernel."""
    out: list[torch.Tensor] = []
    for layer in model.layers:
        projections = [layer.get_submodule(n) for n in _PROJECTIONS]
        if not all(on_native_kernel(p) for p in projections):
            return None
        qkv, o, gate_up, down = (_tensors(p) for p in projections)
        out += [layer.input_layernorm.weight, *qkv, *o, layer.post_attention_layernorm.weight, *gate_up, *down]
    return out


def head_tensors(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The vocabulary projection as ``QuantStack.greedy_run`` takes it; None if it is not on a native kernel."""
    head = model.lm_head
    if not on_native_kernel(head):
        return None
    return _tensors(head)


def unsupported(model) -> str | None:
    """Why the C++ layer stack cannot run ``model``, or None when it can."""
    if model.quantization not in ("int8", "int4"):
        return "the model is not quantised"
    if model.dtype != torch.float32 or model.device.type != "cpu":
        return f"the model is {model.dtype} on {model.device.type}, not float32 on the CPU"
    if not native.available():
        return f"no native kernels ({native.why_unavailable()})"
    if _weights(model) is None:
        return "a decoder projection is not on a native kernel"
    eps = {n.eps for layer in model.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)}
    if len(eps | {model.norm.eps}) != 1:  # one epsilon for every norm, as in every config fastdllm reads
        return "the norms have different epsilons"
    return None


def build(model):
    """The C++ layer stack for ``model``, or None where it does not apply (``unsupported`` says why)."""
    if unsupported(model) is not None:
        return None
    weights = _weights(model)
    cfg = model.cfg
    with torch.inference_mode():  # cos and sin up to TABLE_POSITIONS, made as the eager path makes them
        cos, sin = model.rotary(torch.arange(min(cfg.max_position_embeddings, TABLE_POSITIONS)), torch.float32)
    return native.kernels().QuantStack(weights, model.norm.weight, model.rotary.inv_freq, cos, sin,
                                       cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                                       float(model.norm.eps), float(model.attn_scale))
