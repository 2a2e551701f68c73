"""The transformer: one implementation for the Qwen2 and Llama families.

Projections are fused at load time (q/k/v into ``qkv_proj``, gate/up into ``gate_up_proj``) so
a decoder layer is four matmuls. Attention itself is delegated to an attention back end
(see ``attention.py``), which decides where keys and values come from and go to. The
vocabulary projection runs only on the rows the caller asks for. A quantised model on the CPU
runs the engine's forwards through its C++ layer stack instead (``kernels/stack.py``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from ..kernels import compiled as cpu_kernels
from ..kernels.onednn import Linear
from .rope import RotaryEmbedding, apply_rope

AttentionFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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
        self.quantization = None  # "int8" / "int4" once quantised (``fastdllm.quant``)
        self.quant_stack_enabled = True  # quantised forwards of the engine in one C++ call (``kernels/stack.py``)

    @property
    def quantization(self) -> str | None:
        return self._quantization

    @quantization.setter
    def quantization(self, mode: str | None) -> None:
        self._quantization = mode
        self._quant_stack = None  # rebuilt on the next forward that can use it

    def _stack_for(self, x: torch.Tensor, attend: AttentionFn):
        """The C++ layer stack of a quantised model when this forward can take it (``attend`` must say
        where each row's keys live: ``row_table``), else None."""
        if (self._quantization is None or not self.quant_stack_enabled or torch.is_grad_enabled()
                or x.device.type != "cpu" or x.dtype != torch.float32 or not hasattr(attend, "row_table")):
            return None
        if self._quant_stack is None:
            from ..kernels import stack

            self._quant_stack = stack.build(self) or False
        return self._quant_stack or None

    @property
    def attn_scale(self) -> float:
        return self.cfg.head_dim ** -0.5

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor, attend: AttentionFn) -> torch.Tensor:
        """input_ids, positions: [B, T] -> final normed hidden states [B, T, hidden]."""
        x = self.embed_tokens(input_ids)  # [B, T, hidden]
        stack = self._stack_for(x, attend)
        if stack is not None:  # rotary embedding, every layer and the final norm in one C++ call
            B, T, H = x.shape
            return stack.forward(x.view(B * T, H), positions, attend.cache.data, attend.row_table()).view(B, T, H)
        cos, sin = self.rotary(positions, x.dtype)  # [B, T, D]
        if self.quantization is None and cpu_kernels.applies(x):
            return self.norm(self._decode_layers(x, cos, sin, attend))
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, i, attend, use_reentrant=False)
            else:
                x = layer(x, cos, sin, i, attend)
        return self.norm(x)

    def _decode_layers(self, x, cos, sin, attend: AttentionFn) -> torch.Tensor:
        """The layer stack for a few tokens, as compiled regions between the attention calls."""
        B, T, H = x.shape
        n_q, n_kv = self.cfg.num_attention_heads, self.cfg.num_key_value_heads
        rows = x.reshape(B * T, H)
        cos, sin = cos.reshape(B * T, 1, -1), sin.reshape(B * T, 1, -1)
        q, k, v = cpu_kernels.pre_attention(rows, *self.layers[0].pre_weights(), cos, sin, n_q, n_kv)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            out = attend(i, q.view(B, T, n_q, -1), k.view(B, T, n_kv, -1), v.view(B, T, n_kv, -1))
            out = out.reshape(B * T, -1)
            if i < last:
                nxt = self.layers[i + 1].pre_weights()
                rows, q, k, v = cpu_kernels.between_layers(rows, out, *layer.post_weights(), nxt[0], nxt[2], nxt[3],
                                                       cos, sin, n_q, n_kv)
            else:
                rows = cpu_kernels.post_attention(rows, out, *layer.post_weights())
        return rows.view(B, T, H)

    def greedy_run(self, input_ids: torch.Tensor, positions: torch.Tensor, attend: AttentionFn, steps: int,
                   excluded: int | None) -> torch.Tensor | None:
        """``steps`` greedy AR forwards of one token per sequence, each fed the last one's picks (the first
        maximum of the logits but column ``excluded``), in one call of a quantised model's C++ stack:
        input_ids, positions [1, N] and ``attend`` of the first -> tokens [steps, N]; None where the
        stack or a native vocabulary projection is not there (the caller runs the forwards itself)."""
        emb = self.embed_tokens.weight
        stack = self._stack_for(emb, attend)
        if stack is None or not emb.is_contiguous():
            return None
        from ..kernels.stack import head_tensors

        head = head_tensors(self)
        if head is None:
            return None
        return stack.greedy_run(input_ids.reshape(-1), positions.reshape(-1), attend.cache.data, attend.row_table(),
                                steps, emb, *head, -1 if excluded is None else excluded)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attend: AttentionFn,
                logits_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for the flattened rows ``logits_rows`` of [B*T] (all rows when None): [n, vocab]."""
        h = self.hidden_states(input_ids, positions, attend).flatten(0, 1)  # [B*T, hidden]
        if logits_rows is not None:
            h = h.index_select(0, logits_rows)
        return self.lm_head(h)
