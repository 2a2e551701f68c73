"""Load a LoRA adapter written by ``fastdllm train --lora`` onto its base checkpoint, for inference.

An adapter directory holds peft's own files (``adapter_config.json``,
``adapter_model.safetensors``), ``fastdllm_adapter.json`` (block size, mask token, the base
and new vocabulary sizes) and, when the mask token was new, ``mask_token_rows.safetensors``
(its embedding / lm_head rows, and any rows the vocabulary grew by). ``peft`` is imported only
here, when an adapter is actually loaded; writing adapters is ``fastdllm.training.lora``'s job.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..model.rope import inv_frequencies
from . import Checkpoint, load_checkpoint, load_tokenizer, parse_dtype
from .rows import init_rows

META_FILE = "fastdllm_adapter.json"
ROWS_FILE = "mask_token_rows.safetensors"


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    """``adapter_dir`` as a Path if it holds an adapter written by fastdllm, else ModelLoadError."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file() or not (adapter_dir / META_FILE).is_file():
        raise ModelLoadError(f"{adapter_dir}: not a fastdllm adapter directory (adapter_config.json and "
                             f"{META_FILE} expected)")
    return adapter_dir


def load_with_adapter(base: str | Path | Checkpoint, adapter_dir: str | Path, merge: bool = True,
                      dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
                      quantize: str | None = None, use_native: bool = True) -> Checkpoint:
    """The base checkpoint with the adapter applied: merged into the weights, or as live LoRA layers.

    ``quantize`` ("int8" / "int4", merged adapters only): quantise the merged float32 weights."""
    try:
        from peft import PeftModel
    except ImportError as e:
        raise ModelLoadError("loading a LoRA adapter needs peft: pip install peft") from e
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
        model = peft_model.get_base_model()  # the compiled decode path warns that it bypasses these (engine.backend)
    if quantize is not None:
        if not merge:
            raise ModelLoadError("a quantised model needs the adapter merged (merge=True)")
        from ..quant import quantize_model

        model = quantize_model(model, quantize, parse_dtype(dtype, device), use_native=use_native).eval()
    else:
        model = model.to(parse_dtype(dtype, device)).eval()
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
