"""Hugging Face tensor names <-> fastdllm's fused parameters, with strict checking.

Checkpoints keep separate q/k/v and gate/up projections; the model fuses them. Every
expected tensor must be present with the expected shape, and nothing else may be (rotary
``inv_freq`` buffers that some exporters write are ignored).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..model.config import ModelConfig
from ..errors import ModelLoadError
from ..model import Transformer
from ..quant import GROUP_SIZE, Int4Weight, as_float, cat_rows, layer_mode, linear_names, quantized_linear
from ..model.rope import inv_frequencies

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def expected_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    H, D, I = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, H), "model.norm.weight": (H,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, H)
    o_bias = cfg.attention_bias and cfg.model_type == "llama"
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (H,)
        shapes[p + "post_attention_layernorm.weight"] = (H,)
        for name, rows in (("q", nq * D), ("k", nkv * D), ("v", nkv * D)):
            shapes[p + f"self_attn.{name}_proj.weight"] = (rows, H)
            if cfg.attention_bias:
                shapes[p + f"self_attn.{name}_proj.bias"] = (rows,)
        shapes[p + "self_attn.o_proj.weight"] = (H, nq * D)
        if o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (H,)
        shapes[p + "mlp.gate_proj.weight"] = (I, H)
        shapes[p + "mlp.up_proj.weight"] = (I, H)
        shapes[p + "mlp.down_proj.weight"] = (H, I)
        if cfg.mlp_bias:
            shapes[p + "mlp.gate_proj.bias"] = (I,)
            shapes[p + "mlp.up_proj.bias"] = (I,)
            shapes[p + "mlp.down_proj.bias"] = (H,)
    return shapes


def check_tensors(cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise ModelLoadError naming missing, unexpected or mis-shaped tensors."""
    expected = expected_hf_shapes(cfg)
    found = {k: tuple(v) for k, v in shapes.items() if not k.endswith(IGNORED_SUFFIXES)}
    if cfg.tie_word_embeddings:
        found.pop("lm_head.weight", None)  # tied checkpoints may still store it
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {_few(unexpected)}")
    if wrong:
        problems.append("wrong shape: " + _few([f"{k} {found[k]} (expected {expected[k]})" for k in wrong]))
    if problems:
        raise ModelLoadError(f"checkpoint {source} does not match its config: " + "; ".join(problems))


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def hf_to_fused(cfg: ModelConfig, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map HF names to the model's own state-dict names (fusing q/k/v and gate/up).

    Values may also be quantised weights (``fastdllm.quant.formats``), fused in their format."""
    out = {
        "embed_tokens.weight": t["model.embed_tokens.weight"],
        "norm.weight": t["model.norm.weight"],
        "lm_head.weight": t["model.embed_tokens.weight"] if cfg.tie_word_embeddings else t["lm_head.weight"],
    }
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        out[q + "input_layernorm.weight"] = t[p + "input_layernorm.weight"]
        out[q + "post_attention_layernorm.weight"] = t[p + "post_attention_layernorm.weight"]
        a = p + "self_attn."
        out[q + "self_attn.qkv_proj.weight"] = cat_rows([t[a + f"{n}_proj.weight"] for n in "qkv"])
        if cfg.attention_bias:
            out[q + "self_attn.qkv_proj.bias"] = cat_rows([t[a + f"{n}_proj.bias"] for n in "qkv"])
        out[q + "self_attn.o_proj.weight"] = t[a + "o_proj.weight"]
        if a + "o_proj.bias" in t:
            out[q + "self_attn.o_proj.bias"] = t[a + "o_proj.bias"]
        m = p + "mlp."
        out[q + "mlp.gate_up_proj.weight"] = cat_rows([t[m + "gate_proj.weight"], t[m + "up_proj.weight"]])
        out[q + "mlp.down_proj.weight"] = t[m + "down_proj.weight"]
        if cfg.mlp_bias:
            out[q + "mlp.gate_up_proj.bias"] = cat_rows([t[m + "gate_proj.bias"], t[m + "up_proj.bias"]])
            out[q + "mlp.down_proj.bias"] = t[m + "down_proj.bias"]
    return out


def fused_to_hf(model: Transformer) -> dict[str, torch.Tensor]:
    """The inverse of ``hf_to_fused``: a state dict transformers can load."""
    cfg = model.cfg
    sd = model.state_dict()
    D, nq, nkv, I = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    out = {"model.embed_tokens.weight": sd["embed_tokens.weight"], "model.norm.weight": sd["norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        out[p + "input_layernorm.weight"] = sd[q + "input_layernorm.weight"]
        out[p + "post_attention_layernorm.weight"] = sd[q + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias"):
            key = q + f"self_attn.qkv_proj.{kind}"
            if key in sd:
                for n, part in zip("qkv", sd[key].split([nq * D, nkv * D, nkv * D])):
                    out[p + f"self_attn.{n}_proj.{kind}"] = part
            key = q + f"mlp.gate_up_proj.{kind}"
            if key in sd:
                gate, up = sd[key].split(I)
                out[p + f"mlp.gate_proj.{kind}"], out[p + f"mlp.up_proj.{kind}"] = gate, up
            for name in ("self_attn.o_proj", "mlp.down_proj"):
                if q + f"{name}.{kind}" in sd:
                    out[p + f"{name}.{kind}"] = sd[q + f"{name}.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory: sharded (index.json) or a single file."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [directory / f for f in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.exists()]
        if absent:
            raise ModelLoadError(f"{directory}: shard(s) listed in model.safetensors.index.json are missing: {_few(absent)}")
        return files
    single = directory / "model.safetensors"
    if single.exists():
        return [single]
    raise ModelLoadError(f"{directory}: no model.safetensors or model.safetensors.index.json found")


def read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    tensors[k] = fh.get_tensor(k)
        except Exception as e:  # corrupt or truncated file
            raise ModelLoadError(f"cannot read {f}: {e}") from e
    return tensors


def build_model(cfg: ModelConfig, hf_tensors: dict[str, torch.Tensor], dtype: torch.dtype,
                device: torch.device | str, source: str, quantize: str | None = None,
                use_native: bool = True) -> Transformer:
    """Strictly check ``hf_tensors`` against ``cfg`` and return an eval-mode model.

    ``quantize`` ("int8" / "int4"): the linear layers are quantised from the checkpoint's own
    values (or kept in the quantised format they arrive in, see ``fastdllm.quant``).
    """
    check_tensors(cfg, {k: tuple(v.shape) for k, v in hf_tensors.items()}, source)
    with torch.device("meta"):
        model = Transformer(cfg)
    fused = hf_to_fused(cfg, hf_tensors)
    state: dict[str, torch.Tensor] = {}
    if quantize:
        for name in linear_names(cfg.num_hidden_layers):
            bias = fused.pop(f"{name}.bias", None)
            weight = fused.pop(f"{name}.weight")
            layer = quantized_linear(weight, None if bias is None else as_float(bias),
                                     layer_mode(name, quantize, isinstance(weight, Int4Weight)), dtype, device,
                                     GROUP_SIZE, use_native)
            model.set_submodule(name, layer)
            state.update({f"{name}.{k}": v for k, v in layer.state_dict().items()})
    state.update({k: as_float(v).to(device=device, dtype=dtype) for k, v in fused.items()})
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_word_embeddings and not quantize:
        model.lm_head.weight = model.embed_tokens.weight
    model.quantization = quantize
    model.rotary.inv_freq = inv_frequencies(cfg).to(device)  # buffers were built on meta
    return model.eval()
