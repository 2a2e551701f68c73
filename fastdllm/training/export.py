"""Write a trained model as a Hugging Face directory.

config.json keeps the base ``model_type`` (qwen2 / llama), so transformers still loads the
result as a plain causal LM, and adds ``bd_size`` and ``mask_token_id`` so ``fastdllm.load``
decodes it as a block-diffusion model. Weights go through ``fused_to_hf`` (HF names).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import torch

from ..model.config import ModelConfig
from ..loading.weights import fused_to_hf


def export_config(cfg: ModelConfig, bd_size: int | None, mask_token_id: int | None) -> dict:
    raw = dict(cfg.raw)
    raw["vocab_size"] = cfg.vocab_size
    if bd_size is not None:
        raw["bd_size"] = bd_size
        raw["mask_token_id"] = mask_token_id
    for key in ("dtype", "torch_dtype"):  # the weights are saved in float32
        if key in raw:
            raw[key] = "float32"
    return raw


def save_weights(cfg: ModelConfig, fused_state: dict[str, torch.Tensor], out: Path) -> None:
    from safetensors.torch import save_file

    hf = fused_to_hf(SimpleNamespace(cfg=cfg, state_dict=lambda: fused_state))
    tensors = {k: v.detach().to("cpu", torch.float32).clone() for k, v in hf.items()}  # clone: no shared storage
    tmp = out / ".model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")


def export_model(cfg: ModelConfig, fused_state: dict[str, torch.Tensor], out: str | Path, tokenizer=None,
                 generation_config: dict | None = None, bd_size: int | None = None,
                 mask_token_id: int | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(cfg, fused_state, out)
    (out / "config.json").write_text(json.dumps(export_config(cfg, bd_size, mask_token_id), indent=2) + "\n")
    write_extras(out, cfg, tokenizer, generation_config)
    return out


def write_extras(out: Path, cfg: ModelConfig, tokenizer, generation_config: dict | None) -> None:
    """Tokenizer files and generation_config.json."""
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    gen = dict(generation_config or {})
    if not gen and cfg.eos_token_id:
        gen = {"eos_token_id": cfg.eos_token_id if len(cfg.eos_token_id) > 1 else cfg.eos_token_id[0]}
    if cfg.bos_token_id is not None:
        gen.setdefault("bos_token_id", cfg.bos_token_id)
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
