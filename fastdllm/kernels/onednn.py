"""Linear layers on oneDNN, with weights prepacked once.

Every linear layer of the model (``Linear``) runs on oneDNN with weights prepacked once, in
float32 and, where oneDNN has a bfloat16 path on this CPU, in bfloat16
(``fastdllm.kernels.precision`` decides whether a model runs in bfloat16 at all). Elsewhere
(other devices, autograd, float64) it is ``torch.nn.functional.linear``, or the compiled
product of ``compiled.py`` where that applies. Which of these a model's layers may use is set
per model by its engine's runtime options (``bind``), not by process-wide switches; whether
oneDNN runs a dtype on this CPU is probed once per process (a fact of the machine).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .compiled import CompiledKernels

_probed: dict[torch.dtype, bool] = {}

ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def onednn_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's prepacked linear runs in ``dtype`` here (probed once per dtype)."""
    if dtype not in _probed:
        ok = dtype in ONEDNN_DTYPES and torch.backends.mkldnn.is_available()
        if ok:
            try:  # bfloat16 needs AVX512-BW/VL/DQ or AVX-NE-CONVERT; the ops raise without them
                w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(4, 8, dtype=dtype), 1)
                torch.ops.mkldnn._linear_pointwise(torch.ones(2, 8, dtype=dtype), w, None, "none", [], "")
            except Exception:
                ok = False
        _probed[dtype] = ok
    return _probed[dtype]


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict names) with faster CPU inference.

    In float32 (or bfloat16, where oneDNN has it) inference on the CPU the weight is repacked
    once into oneDNN's blocked layout and multiplied with oneDNN, several times faster than the
    default MKL path on skinny inputs. In float32 a row's result does not depend on how many
    rows come with it (tested); in bfloat16 that is not tested (no such CPU here).
    """

    _packed: tuple | None = None
    onednn = True  # oneDNN where it runs (``bind`` sets these per model, from the runtime options)
    compiled: CompiledKernels | None = None  # the compiled product for decode steps, when on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (self.onednn and x.device.type == "cpu" and x.dtype == w.dtype and w.dtype in ONEDNN_DTYPES
                and not torch.is_grad_enabled() and onednn_available(w.dtype)):
            key = (w.data_ptr(), w._version)
            if self._packed is None or self._packed[0] != key:
                self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), 8))
            y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), self._packed[1], self.bias,
                                                   "none", [], "")
            return y.reshape(*x.shape[:-1], w.shape[0])
        if self.compiled is not None:
            return self.compiled.linear(x, w, self.bias)
        return F.linear(x, w, self.bias)


def bind(model: nn.Module, onednn: bool, compiled: CompiledKernels | None) -> None:
    """Point every ``Linear`` of ``model`` at these kernels (its engine's runtime options). The
    setting is the model's: a model shared by two engines runs with the last one's."""
    for m in model.modules():
        if isinstance(m, Linear):
            m.onednn, m.compiled = onednn, compiled
