"""The transformer: one implementation for the Qwen2 and Llama families.

Projections are fused at load time (q/k/v into ``qkv_proj``, gate/up into ``gate_up_proj``) so
a decoder layer is four matmuls. The model's signature is token ids + positions + an attention
callable -> hidden states (``hidden_states``), and hidden states -> logits (``logits``) for the
rows the caller asks for. Attention is the callable's business (``attention.py``): it decides
where keys and values come from and go to, so the model knows nothing of KV pools. How the
decoder layers run for a forward (eager here; compiled regions or a native layer stack) is
chosen by the engine's forward backend (``fastdllm.engine.backend``), which may pass its own
layer runner to ``hidden_states``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from ..kernels.onednn import Linear
from .attention import AttentionFn
from .rope import RotaryEmbedding, apply_rope

# (x [B, T, hidden], cos, sin [B, T, D], attend) -> x after every decoder layer, [B, T, hidden]
LayerRunner = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionFn], torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 statistics as in transformers (also for float64, to match it exactly)
        h = x if x.dtype == torch.float32 else x.to(torch.float32)  # skipping a no-op cast saves a dispatch
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (h if x.dtype == torch.float32 else h.to(x.dtype))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_q, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        qkv_bias = cfg.attention_bias
        o_bias = cfg.attention_bias and cfg.model_type == "llama"
        self.qkv_proj = Linear(cfg.hidden_size, (self.n_q + 2 * self.n_kv) * self.head_dim, bias=qkv_bias)
        self.o_proj = Linear(self.n_q * self.head_dim, cfg.hidden_size, bias=o_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int,
                attend: AttentionFn) -> torch.Tensor:
        B, T, _ = x.shape
        D, n_qk = self.head_dim, self.n_q + self.n_kv
        qkv = self.qkv_proj(x)  # [B, T, (Hq + 2 Hkv) * D]
        # queries and keys rotated in one go (elementwise: the same numbers as one by one)
        qk = apply_rope(qkv[..., :n_qk * D].view(B, T, n_qk, D), cos, sin)  # [B, T, Hq + Hkv, D]
        q, k = qk[:, :, :self.n_q], qk[:, :, self.n_q:]  # [B, T, Hq, D], [B, T, Hkv, D]
        v = qkv[..., n_qk * D:].view(B, T, self.n_kv, D)
        return self.o_proj(attend(layer, q, k, v))  # [B, T, hidden]


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.inter, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, layer: int, attend: AttentionFn):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layer, attend)
        return x + self.mlp(self.post_attention_layernorm(x))

    def pre_weights(self):
        a = self.self_attn
        return self.input_layernorm.weight, self.input_layernorm.eps, a.qkv_proj.weight, a.qkv_proj.bias

    def post_weights(self):
        a, m, n = self.self_attn, self.mlp, self.post_attention_layernorm
        return (a.o_proj.weight, a.o_proj.bias, n.weight, n.eps, m.gate_up_proj.weight, m.gate_up_proj.bias,
                m.down_proj.weight, m.down_proj.bias)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.gradient_checkpointing = False
        self.weights_version = 0  # bumped where layers are swapped or repacked in place (``weights_changed``)
        self.quantization = None  # "int8" / "int4" once quantised (``fastdllm.quant``)

    @property
    def quantization(self) -> str | None:
        return self._quantization

    @quantization.setter
    def quantization(self, mode: str | None) -> None:
        self._quantization = mode
        self.weights_changed()

    def weights_changed(self) -> None:
        """Say that layers were swapped or repacked in place: whatever a caller built from the
        weights (a backend's native layer stack) is rebuilt before its next use."""
        self.weights_version += 1

    @property
    def attn_scale(self) -> float:
        return self.cfg.head_dim ** -0.5

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor, attend: AttentionFn,
                      layers: LayerRunner | None = None) -> torch.Tensor:
        """input_ids, positions: [B, T] -> final normed hidden states [B, T, hidden]. ``layers``: how
        the decoder layers run (default ``run_layers``, eager)."""
        x = self.embed_tokens(input_ids)  # [B, T, hidden]
        cos, sin = self.rotary(positions, x.dtype)  # [B, T, D]
        return self.norm((layers or self.run_layers)(x, cos, sin, attend))

    def run_layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: AttentionFn) -> torch.Tensor:
        """Every decoder layer, eagerly (with gradient checkpointing when training asks for it)."""
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, i, attend, use_reentrant=False)
            else:
                x = layer(x, cos, sin, i, attend)
        return x

    def logits(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [..., hidden] -> logits [n, vocab] of its flattened rows ``rows`` (all when None)."""
        h = hidden.flatten(0, -2)  # [B*T, hidden]
        if rows is not None:
            h = h.index_select(0, rows)
        return self.lm_head(h)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attend: AttentionFn,
                logits_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for the flattened rows ``logits_rows`` of [B*T] (all rows when None): [n, vocab]."""
        return self.logits(self.hidden_states(input_ids, positions, attend), logits_rows)
