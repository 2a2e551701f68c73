"""Fast paths for decode steps on the CPU.

Multiplying a few activation rows by a weight matrix is bound by memory bandwidth, and MKL's
matrix-vector path streams weights at about a third of what this kind of machine delivers.
Written as multiply-and-reduce and compiled with ``torch.compile`` (inductor), the same
product streams weights at close to full bandwidth. For decode steps (at most ``MAX_ROWS``
tokens in a forward, float32, inference, CPU) the layers run as compiled regions between
attention calls, the end of one layer fused with the start of the next, which also removes most per-op
Python overhead.
Compiling costs some seconds once per process, so it is opt-in: ``fastdllm.load(...,
compile=True)``, ``--compile`` on the command line, or ``FASTDLLM_COMPILE=1``. Worth it for
servers, benchmarks and long generations; a one-off short generation starts faster without.

Linear layers outside these regions run on oneDNN (``onednn.py``).
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 4
_log = logging.getLogger(__name__)
_compiled: dict[str, object] = {}


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
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=True) if enabled() else None
    return _compiled[name]


def set_compile(on: bool) -> None:
    """Turn the compiled decode path on or off for this process."""
    _compiled.pop("enabled", None)
    os.environ["FASTDLLM_COMPILE"] = "1" if on else "0"


def enabled() -> bool:
    if "enabled" not in _compiled:
        ok = os.environ.get("FASTDLLM_COMPILE", "0") == "1"
        if ok:
            try:  # a machine without a working C++ toolchain falls back to eager
                torch.compile(_mv, dynamic=True)(torch.ones(1, 8), torch.ones(4, 8), None)
            except Exception as e:  # pragma: no cover - depends on the toolchain
                _log.warning("fastdllm: torch.compile unavailable (%s); decode steps run eagerly", e)
                ok = False
        _compiled["enabled"] = ok
    return bool(_compiled["enabled"])


def applies(x: torch.Tensor) -> bool:
    """Whether a forward of ``x`` [..., H] takes the compiled decode path."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() <= MAX_ROWS * x.shape[-1]
            and not torch.is_grad_enabled() and enabled())


def pre_attention(*args):
    return _get("pre", _pre_attention)(*args)


def post_attention(*args):
    return _get("post", _post_attention)(*args)


def between_layers(*args):
    return _get("between", _between)(*args)


def decode_layers(layers, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend, n_q: int,
                  n_kv: int) -> torch.Tensor:
    """A model's decoder ``layers`` (each with ``pre_weights`` and ``post_weights``) for a few tokens,
    as compiled regions between the attention calls: x [B, T, H], cos, sin [B, T, D] -> [B, T, H]."""
    B, T, H = x.shape
    rows = x.reshape(B * T, H)
    cos, sin = cos.reshape(B * T, 1, -1), sin.reshape(B * T, 1, -1)
    q, k, v = pre_attention(rows, *layers[0].pre_weights(), cos, sin, n_q, n_kv)
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        out = attend(i, q.view(B, T, n_q, -1), k.view(B, T, n_kv, -1), v.view(B, T, n_kv, -1))
        out = out.reshape(B * T, -1)
        if i < last:
            nxt = layers[i + 1].pre_weights()
            rows, q, k, v = between_layers(rows, out, *layer.post_weights(), nxt[0], nxt[2], nxt[3], cos, sin, n_q, n_kv)
        else:
            rows = post_attention(rows, out, *layer.post_weights())
    return rows.view(B, T, H)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if applies(x) and weight.dtype == torch.float32:
        rows = x.reshape(-1, x.shape[-1])
        return _get("mv", _mv)(rows, weight, bias).reshape(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)
