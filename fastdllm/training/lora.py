"""LoRA training with peft on fastdllm's fused modules (qkv_proj, o_proj, gate_up_proj, down_proj).

``apply_lora`` wraps the model for training, ``save_adapter`` writes the adapter directory
(layout in ``fastdllm.loading.adapter``, which loads it for inference). The mask rows keep
their mean initialisation during LoRA training (only the adapters train).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..loading.adapter import META_FILE, ROWS_FILE
from .vocab import MaskToken


def apply_lora(model: nn.Module, r: int, alpha: float, dropout: float, targets: list[str]):
    """Wrap ``model`` in a peft ``PeftModel``; the LoRA layers are injected into ``model`` itself."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    return get_peft_model(model, config)


def mask_rows(mask: MaskToken | None) -> list[int]:
    if mask is None or not mask.added:
        return []
    return sorted(set(range(mask.base_vocab_size, mask.vocab_size)) | {mask.id})


def save_adapter(peft_model, out: Path, mask: MaskToken | None, bd_size: int | None, base: str | None) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out))
    model = peft_model.get_base_model()
    rows = mask_rows(mask)
    if rows:
        idx = torch.tensor(rows)
        tensors = {"embed_tokens": model.embed_tokens.weight.detach()[idx].float().contiguous()}
        if model.lm_head.weight is not model.embed_tokens.weight:
            tensors["lm_head"] = model.lm_head.weight.detach()[idx].float().contiguous()
        save_file(tensors, str(out / ROWS_FILE))
    V = model.cfg.vocab_size
    meta = {"base_model": base, "bd_size": bd_size, "mask_token_id": mask.id if mask else None,
            "base_vocab_size": mask.base_vocab_size if mask else V, "vocab_size": V, "rows": rows}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
