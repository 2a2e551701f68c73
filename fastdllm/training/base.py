"""The model a run starts from: a pretrained checkpoint, or a random init from a config.json.

Training keeps float32 master weights (bf16 comes from autocast on CUDA). The model's
``cfg.raw`` is the config.json dict the export writes back, with ``vocab_size``, ``bd_size``
and ``mask_token_id`` updated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..model.config import ModelConfig
from ..loading import load_checkpoint, load_tokenizer
from ..model import Transformer
from .config import TrainConfig, TrainConfigError


@dataclass
class Base:
    model: Transformer
    tokenizer: Any | None
    generation_config: dict = field(default_factory=dict)
    source: str | None = None


def load_base(cfg: TrainConfig, device: torch.device) -> Base:
    tokenizer = _tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    if cfg.init_from_scratch:
        raw = _scratch_config(cfg)
        model = init_from_scratch(raw, cfg.seed).to(device)
        if tokenizer is None and cfg.model and Path(cfg.model).is_dir():
            tokenizer = load_tokenizer(Path(cfg.model))
        gen = {"eos_token_id": model.cfg.eos_token_id} if model.cfg.eos_token_id else {}
        return Base(model, tokenizer, gen, None)
    ckpt = load_checkpoint(cfg.model, dtype="float32", device=device)
    return Base(ckpt.model, tokenizer if tokenizer is not None else ckpt.tokenizer, dict(ckpt.generation_config),
                str(cfg.model))


def _tokenizer(path: str):
    tok = load_tokenizer(Path(path))
    if tok is None:
        raise TrainConfigError(f"no tokenizer files in {path}")
    return tok


def _scratch_config(cfg: TrainConfig) -> dict:
    src = cfg.model_config
    if src is None:
        src = str(Path(cfg.model) / "config.json")
    if isinstance(src, dict):
        return dict(src)
    path = Path(src)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise TrainConfigError(f"model config not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TrainConfigError(f"cannot parse {path}: {e}") from None


@torch.no_grad()
def init_from_scratch(raw: dict, seed: int) -> Transformer:
    """A randomly initialised Transformer: N(0, initializer_range) matrices, unit norms, zero biases."""
    cfg = ModelConfig.from_dict(raw)
    std = float(raw.get("initializer_range", 0.02))
    g = torch.Generator().manual_seed(seed)
    model = Transformer(cfg)
    for name, p in sorted(model.named_parameters()):  # sorted: independent of module order
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith(".bias"):
            p.zero_()
        else:
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


