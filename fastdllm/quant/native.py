"""fastdllm's own CPU kernel for int8 weights with float32 activations (``cpu_int8.cpp``).

torch's int8 weight-only kernel is vectorised for bfloat16 input only on x86; rounding the
activations to bfloat16 costs accuracy on small models and float32 input takes a scalar loop.
The C++ kernel (AVX2 + FMA) keeps float32 activations and reads each weight row once per call.
It is compiled with torch's extension builder the first time it is needed (about a minute, then
cached under ``TORCH_EXTENSIONS_DIR``); without a compiler or AVX2, or with
``FASTDLLM_NATIVE=0``, int8 layers use torch's kernel with bfloat16 activations instead.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch

_log = logging.getLogger(__name__)
SOURCES = [Path(__file__).with_name(n) for n in ("cpu_int8.cpp", "cpu_int8_stack.cpp")]  # + cpu_int8.h
NAME = "fastdllm_cpu_int8"
_state: dict[str, object] = {}


def _cpu_supported() -> bool:
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _built() -> bool:
    """Whether a build is cached (only to say so before a long compile)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return (Path(_get_build_directory(NAME, False)) / f"{NAME}.so").exists()
    except Exception:  # a private helper of torch's: never let it decide anything else
        return False


def int8_kernel():
    """The compiled extension module, or None where it cannot be used (reason logged once)."""
    if "module" in _state:
        return _state["module"]
    module, why = None, None
    if os.environ.get("FASTDLLM_NATIVE", "1") == "0":
        why = "FASTDLLM_NATIVE=0"
    elif not _cpu_supported():
        why = f"the CPU has no AVX2 (torch reports {torch.backends.cpu.get_cpu_capability()})"
    else:
        try:
            from torch.utils.cpp_extension import load

            if not _built():
                print("fastdllm: compiling the int8 CPU kernel (once, about a minute)", file=sys.stderr, flush=True)
            # -fopenmp: at::parallel_for is a header template, serial without it; no contraction of
            # a * b + c into FMAs at the compiler's choice, so every row is rounded the same way
            flags = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-ffp-contract=off"]
            module = load(NAME, [str(p) for p in SOURCES], extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as e:  # no compiler, no ninja, ...: torch's kernel still works
            last = (str(e).strip().splitlines() or [""])[-1][:200]
            why = f"it could not be built ({type(e).__name__}: {last})"
    if why:
        _log.warning("fastdllm: int8 layers use torch's bfloat16-input kernel: %s", why)
    _state["module"] = module
    return module


def int8_available() -> bool:
    return int8_kernel() is not None


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x float32 [M, K], q int8 [N, K], scale float32 [N] -> float32 [M, N] (CPU)."""
    return int8_kernel().int8_linear(x, q, scale, bias)

