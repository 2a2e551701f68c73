"""Model configuration: a small dataclass built from a Hugging Face ``config.json``.

One class covers the Qwen2 family (QKV bias) and the Llama family (no QKV bias, SmolLM2),
and the block-diffusion variant ``Fast_dLLM_Qwen`` (a Qwen2 body plus ``bd_size``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UnsupportedModelError

#: model_type values fastdllm can run, and whether the family has a QKV bias by default.
SUPPORTED_MODEL_TYPES = {"Fast_dLLM_Qwen": True, "qwen2": True, "llama": False}
BLOCK_DIFFUSION_TYPES = {"Fast_dLLM_Qwen"}
#: the mask token of the released checkpoints (and of models fastdllm trains), and its id there
MASK_TOKEN = "|<MASK>|"
RELEASED_MASK_ID = 151665


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    # Block diffusion: set for Fast_dLLM checkpoints and for models fastdllm trained.
    bd_size: int | None = None
    mask_token_id: int | None = None
    small_block_size: int | None = None  # sub-block size the model decodes with (default 8)
    threshold: float | None = None       # decoding threshold the model was tuned for (default 0.9)
    acceptance: str | None = None        # accept rule the model decodes with (default "threshold")
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def is_block_diffusion(self) -> bool:
        return self.bd_size is not None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"unsupported model_type {model_type!r}: fastdllm runs "
                f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
            )
        if d.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"unsupported hidden_act {d['hidden_act']!r} (only silu)")
        if d.get("use_sliding_window") and d.get("sliding_window"):
            raise UnsupportedModelError("sliding-window attention is not supported")
        n_heads = d["num_attention_heads"]
        head_dim = d.get("head_dim") or d["hidden_size"] // n_heads
        eos = d.get("eos_token_id")
        eos_list = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        rope_scaling = d.get("rope_scaling")
        rope_params = d.get("rope_parameters") or {}  # transformers >= 5 writes only this
        if rope_scaling is None and rope_params.get("rope_type", rope_params.get("type", "default")) != "default":
            rope_scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
        bd_size = d.get("bd_size")
        if bd_size is None and model_type in BLOCK_DIFFUSION_TYPES:
            bd_size = 32
        return cls(
            model_type=model_type,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=n_heads,
            num_key_value_heads=d.get("num_key_value_heads") or n_heads,
            head_dim=head_dim,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(d.get("rope_theta", (d.get("rope_parameters") or {}).get("rope_theta", 10000.0))),
            rope_scaling=rope_scaling,
            max_position_embeddings=d.get("max_position_embeddings", 32768),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", SUPPORTED_MODEL_TYPES[model_type])),
            mlp_bias=bool(d.get("mlp_bias", False)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=eos_list,
            pad_token_id=d.get("pad_token_id"),
            bd_size=bd_size,
            mask_token_id=d.get("mask_token_id"),
            small_block_size=d.get("small_block_size"),
            threshold=parse_threshold(d.get("threshold")),
            acceptance=_acceptance(d.get("acceptance")),
            raw=dict(d),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def parse_threshold(v) -> float | None:
    """A config.json ``threshold``: None when absent, else a number in [0, 1] (UnsupportedModelError otherwise)."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise UnsupportedModelError(f"config.json: threshold must be a number in [0, 1], got {v!r}")
    return float(v)


def _acceptance(v) -> str | None:
    # which names exist is the engine's business (``engine.options.checkpoint_acceptance`` checks at load)
    if v is not None and not isinstance(v, str):
        raise UnsupportedModelError(f"config.json: acceptance must be a string, got {v!r}")
    return v
