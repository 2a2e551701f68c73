"""LoRA with peft on fastdllm's fused modules (qkv_proj, o_proj, gate_up_proj, down_proj).

An adapter directory holds peft's own files (``adapter_config.json``,
``adapter_model.safetensors``), ``fastdllm_adapter.json`` (block size, mask token, the base
and new vocabulary sizes) and, when the mask token was new, ``mask_token_rows.safetensors``
(its embedding / lm_head rows, and any rows the vocabulary grew by). The mask rows keep
their mean initialisation during LoRA training (only the adapters train).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError
from ..loading import Checkpoint, load_checkpoint, load_tokenizer, parse_dtype
from ..rope import inv_frequencies
from .vocab import MaskToken, init_rows

META_FILE = "fastdllm_adapter.json"
ROWS_FILE = "mask_token_rows.safetensors"


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


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    """``adapter_dir`` as a Path if it holds an adapter written by fastdllm, else ModelLoadError."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file() or not (adapter_dir / META_FILE).is_file():
        raise ModelLoadError(f"{adapter_dir}: not a fastdllm adapter directory (adapter_config.json and "
                             f"{META_FILE} expected)")
    return adapter_dir


def load_with_adapter(base: str | Path | Checkpoint, adapter_dir: str | Path, merge: bool = True,
                      dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu") -> Checkpoint:
    """The base checkpoint with the adapter applied: merged into the weights, or as live LoRA layers."""
    from peft import PeftModel
    from safetensors.torch import load_file

    adapter_dir = check_adapter_dir(adapter_dir)
    meta = json.loads((adapter_dir / META_FILE).read_text())
    ckpt = base if isinstance(base, Checkpoint) else load_checkpoint(base, dtype="float32", device=device)
    model = ckpt.model
    if model.cfg.vocab_size != meta["base_vocab_size"]:
        raise ModelLoadError(f"{adapter_dir}: adapter was trained on a base with vocabulary "
                             f"{meta['base_vocab_size']}, this base has {model.cfg.vocab_size}")
    if meta["rows"]:
        init_rows(model, meta["base_vocab_size"], meta["vocab_size"], meta["mask_token_id"])
        saved = load_file(str(adapter_dir / ROWS_FILE))
        idx = torch.tensor(meta["rows"])
        with torch.no_grad():
            model.embed_tokens.weight[idx] = saved["embed_tokens"].to(model.embed_tokens.weight)
            if "lm_head" in saved:
                model.lm_head.weight[idx] = saved["lm_head"].to(model.lm_head.weight)
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    if merge:
        model = peft_model.merge_and_unload()
    else:
        model = peft_model.get_base_model()
        from .. import cpu_kernels

        if cpu_kernels.enabled():
            warnings.warn("unmerged LoRA layers are bypassed by the compiled decode path; load with merge=True",
                          stacklevel=2)
    model = model.to(parse_dtype(dtype)).eval()
    model.rotary.inv_freq = inv_frequencies(model.cfg).to(model.device)  # .to(dtype) cast the float32 buffer
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = model.cfg
    if meta.get("bd_size") is not None:
        cfg.bd_size = meta["bd_size"]
    if meta.get("mask_token_id") is not None:
        cfg.mask_token_id = meta["mask_token_id"]
    cfg.raw.update({"bd_size": cfg.bd_size, "mask_token_id": cfg.mask_token_id, "vocab_size": cfg.vocab_size})
    tokenizer = load_tokenizer(adapter_dir) or ckpt.tokenizer
    return Checkpoint(model, cfg, tokenizer, ckpt.path, dict(ckpt.generation_config))
