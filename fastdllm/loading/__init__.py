"""Load a checkpoint (directory, .gguf file or hub id) into a model, tokenizer and defaults."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..model.config import ModelConfig
from ..errors import ModelLoadError
from ..model import Transformer
from ..kernels.precision import auto_dtype
from ..quant import parse_quantize
from .hub import resolve
from .quiet import quiet_transformers
from .weights import build_model, read_safetensors, safetensors_files

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "float64": torch.float64,
          "fp64": torch.float64, "double": torch.float64}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class Checkpoint:
    model: Transformer
    config: ModelConfig
    tokenizer: Any | None
    path: Path
    generation_config: dict = field(default_factory=dict)


def parse_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """A torch dtype for ``dtype``; "auto" is bfloat16 on CUDA and float32 elsewhere (``fastdllm.kernels.precision``)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ModelLoadError(f"unsupported dtype {dtype}")
        return dtype
    key = str(dtype).replace("torch.", "")
    if key == "auto":
        return auto_dtype(device or "cpu")
    if key not in DTYPES:
        raise ModelLoadError(f"unsupported dtype {dtype!r}: use auto, float32, bfloat16, float16 or float64")
    return DTYPES[key]


def parse_device(device: str | torch.device | None) -> torch.device:
    try:
        dev = torch.device(device or "cpu")
    except RuntimeError as e:
        raise ModelLoadError(f"invalid device {device!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return dev


def load_checkpoint(source: str | Path, dtype: str | torch.dtype | None = "float32",
                    device: str | torch.device | None = "cpu", revision: str | None = None,
                    quantize: str | None = None, use_native: bool = True) -> Checkpoint:
    """Load ``source`` in exactly ``dtype`` (no hardware policy here; see ``fastdllm.load``).

    ``quantize``: None, "int8" or "int4" (``fastdllm.quant``). A GGUF file's Q4_0/Q4_1 tensors
    are kept as their 4-bit codes under "int4"; everything else is dequantised first.
    ``use_native``: False keeps quantised layers off fastdllm's native kernels (``RuntimeOptions.native``).
    """
    dev = parse_device(device)
    dt, mode = parse_dtype(dtype, dev), parse_quantize(quantize)
    if mode == "int4-gptq":
        raise ModelLoadError("int4-gptq calibrates on the model's own decoding: load with fastdllm.load")
    path = resolve(source, revision)
    if path.suffix == ".gguf":
        from .gguf import read_gguf

        raw_config, tensors, tokenizer = read_gguf(path, keep_q4=mode == "int4")
        cfg = ModelConfig.from_dict(raw_config)
        model = build_model(cfg, tensors, dt, dev, str(path), mode, use_native)
        gen = {"eos_token_id": cfg.eos_token_id}
        return Checkpoint(model, cfg, tokenizer, path, gen)
    config_file = path / "config.json"
    if not config_file.exists():
        raise ModelLoadError(f"{path}: no config.json (not a Hugging Face checkpoint directory)")
    cfg = ModelConfig.from_file(config_file)
    tensors = read_safetensors(safetensors_files(path))
    model = build_model(cfg, tensors, dt, dev, str(path), mode, use_native)
    del tensors
    gen_file = path / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.exists() else {}
    return Checkpoint(model, cfg, load_tokenizer(path), path, gen)


def load_tokenizer(path: Path):
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():  # it complains about the custom model_type and the config's legacy keys
            return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as e:  # a broken tokenizer is a load error, not a crash
        raise ModelLoadError(f"{path}: cannot load the tokenizer: {e}") from e
