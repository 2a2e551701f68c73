"""Fast paths for decode steps on the CPU.

Multiplying a few activation rows by a weight matrix is bound by memory bandwidth, and MKL's
matrix-vector path streams weights at about a third of what this kind of machine delivers.
Written as multiply-and-reduce and compiled with ``torch.compile`` (inductor), the same
product streams weights at close to full bandwidth. For decode steps (at most ``MAX_ROWS``
tokens in a forward, float32, inference, CPU) the layers run as compiled regions between
attention calls, the end of one layer fused with the start of the next, which also removes most per-op
Python overhead.
Compiling costs some seconds once per process, so it is opt-in: ``fastdllm.load(...,
compile=True)`` (``RuntimeOptions.compile``), ``--compile`` on the command line, or
``FASTDLLM_COMPILE=1``. Worth it for servers, benchmarks and long generations; a one-off short
generation starts faster without. The switch is a ``CompiledKernels`` object per engine, built
from its runtime options; what is process-wide is only the cache of compiled code (compiling is
what costs) and whether ``torch.compile`` works on this machine at all.

Linear layers outside these regions run on oneDNN (``onednn.py``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

MAX_ROWS = 4
_log = logging.getLogger(__name__)
_cache: dict[str, object] = {}  # compiled regions by name, and the toolchain probe: a cache, not a switch


def _mv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = (x[:, None, :] * w[None]).sum(-1)  # x [M, K], w [N, K] -> [M, N]
    return y if b is None else y + b


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _pre_attention(x, norm_w, eps: float, qkv_w, qkv_b, cos, sin, n_q: int, n_kv: int):
    # x [M, H]; cos/sin [M, 1, D] -> q [M, Hq, D], k, v [M, Hkv, D]
    qkv = _mv(_rms(x, norm_w, eps), qkv_w, qkv_b)
    d = cos.shape[-1]
    q, k, v = qkv.split([n_q * d, n_kv * d, n_kv * d], dim=-1)
    q = _rope(q.reshape(-1, n_q, d), cos, sin)
    k = _rope(k.reshape(-1, n_kv, d), cos, sin)
    return q, k, v.reshape(-1, n_kv, d)


def _post_attention(x, attn, o_w, o_b, norm_w, eps: float, gu_w, gu_b, down_w, down_b):
    x = x + _mv(attn, o_w, o_b)
    gate, up = _mv(_rms(x, norm_w, eps), gu_w, gu_b).chunk(2, dim=-1)
    return x + _mv(F.silu(gate) * up, down_w, down_b)


def _between(x, attn, o_w, o_b, norm2_w, eps: float, gu_w, gu_b, down_w, down_b,
             next_norm_w, next_qkv_w, next_qkv_b, cos, sin, n_q: int, n_kv: int):
    """The end of one layer and the start of the next, in one compiled region."""
    x = _post_attention(x, attn, o_w, o_b, norm2_w, eps, gu_w, gu_b, down_w, down_b)
    return (x, *_pre_attention(x, next_norm_w, eps, next_qkv_w, next_qkv_b, cos, sin, n_q, n_kv))


def _get(name: str, fn):
    if name not in _cache:
        _cache[name] = torch.compile(fn, dynamic=True)
    return _cache[name]


def compile_works() -> bool:
    """Whether ``torch.compile`` works on this machine (probed once per process: a fact of the toolchain)."""
    if "works" not in _cache:
        try:  # a machine without a working C++ toolchain falls back to eager
            torch.compile(_mv, dynamic=True)(torch.ones(1, 8), torch.ones(4, 8), None)
            _cache["works"] = True
        except Exception as e:  # pragma: no cover - depends on the toolchain
            _log.warning("fastdllm: torch.compile unavailable (%s); decode steps run eagerly", e)
            _cache["works"] = False
    return bool(_cache["works"])


class CompiledKernels:
    """The compiled decode regions of one engine: on where its runtime options ask for them
    (``RuntimeOptions.compile``) and ``torch.compile`` works here."""

    def __init__(self, on: bool):
        self.enabled = bool(on) and compile_works()

    def applies(self, x: torch.Tensor) -> bool:
        """Whether a forward of ``x`` [..., H] takes the compiled decode path."""
        return (self.enabled and x.device.type == "cpu" and x.dtype == torch.float32
                and x.numel() <= MAX_ROWS * x.shape[-1] and not torch.is_grad_enabled())

    def applies_to_tokens(self, n_tokens: int, dtype: torch.dtype, device: torch.device) -> bool:
        """``applies`` for a forward of ``n_tokens`` tokens of a model in ``dtype`` on ``device``."""
        return (self.enabled and device.type == "cpu" and dtype == torch.float32 and n_tokens <= MAX_ROWS
                and not torch.is_grad_enabled())

    def decode_layers(self, layers, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend, n_q: int,
                      n_kv: int) -> torch.Tensor:
        """A model's decoder ``layers`` (each with ``pre_weights`` and ``post_weights``) for a few tokens,
        as compiled regions between the attention calls: x [B, T, H], cos, sin [B, T, D] -> [B, T, H]."""
        pre, between, post = _get("pre", _pre_attention), _get("between", _between), _get("post", _post_attention)
        B, T, H = x.shape
        rows = x.reshape(B * T, H)
        cos, sin = cos.reshape(B * T, 1, -1), sin.reshape(B * T, 1, -1)
        q, k, v = pre(rows, *layers[0].pre_weights(), cos, sin, n_q, n_kv)  # [BT, Hq, D], [BT, Hkv, D] x 2
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            out = attend(i, q.view(B, T, n_q, -1), k.view(B, T, n_kv, -1), v.view(B, T, n_kv, -1))
            out = out.reshape(B * T, -1)  # [BT, Hq * D]
            if i < last:
                nxt = layers[i + 1].pre_weights()
                rows, q, k, v = between(rows, out, *layer.post_weights(), nxt[0], nxt[2], nxt[3], cos, sin, n_q, n_kv)
            else:
                rows = post(rows, out, *layer.post_weights())
        return rows.view(B, T, H)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``F.linear``, as a compiled multiply-and-reduce where the decode path applies."""
        if self.applies(x) and weight.dtype == torch.float32:
            rows = x.reshape(-1, x.shape[-1])
            return _get("mv", _mv)(rows, weight, bias).reshape(*x.shape[:-1], weight.shape[0])
        return F.linear(x, weight, bias)
