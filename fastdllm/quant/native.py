"""fastdllm's own CPU kernel for int8 weights with float32 activations (``cpu_int8.cpp``).

torch's int8 weight-only kernel is vectorised for bfloat16 input only on x86; rounding the
activations to bfloat16 costs accuracy on small models and float32 input takes a scalar loop.
The C++ kernel (AVX2 + FMA) keeps float32 activations and reads each weight row once per call.
It is compiled with torch's extension builder the first time it is needed (about a minute, then
cached under ``TORCH_EXTENSIONS_DIR``); without a compiler or AVX2, or with
``FASTDLLM_NATIVE=0``, int8 layers use torch's kernel with bfloat16 activations instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

import torch

_log = logging.getLogger(__name__)
SOURCES = [Path(__file__).with_name(n) for n in ("cpu_int8.cpp", "cpu_int8_stack.cpp")]
HEADER = Path(__file__).with_name("cpu_int8.h")
# the build is cached under this name: the header's hash is in it, so editing only the header
# rebuilds too (torch's extension builder hashes the sources it compiles, not what they include)
NAME = "fastdllm_cpu_int8_" + hashlib.sha1(b"".join(p.read_bytes() for p in [*SOURCES, HEADER])).hexdigest()[:10]
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


GROUP = 8  # weight rows interleaved by the packed layout, and inputs per chunk


def _padded(n: int) -> int:
    return -(-n // GROUP) * GROUP


def pack_int8(q: torch.Tensor) -> torch.Tensor:
    """int8 [N, K] -> the kernel's layout: [ceil(N/8), ceil(K/8), 8 rows, 8 inputs], flat, zero-padded.

    A group of 8 weight rows is then one sequential stream, 8 inputs of each row in turn."""
    N, K = q.shape
    padded = torch.zeros(_padded(N), _padded(K), dtype=torch.int8, device=q.device)
    padded[:N, :K] = q
    return padded.view(-1, GROUP, _padded(K) // GROUP, GROUP).permute(0, 2, 1, 3).contiguous().flatten()


def unpack_int8(packed: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """The inverse of ``pack_int8``: int8 [N, K]."""
    grid = packed.view(-1, _padded(K) // GROUP, GROUP, GROUP).permute(0, 2, 1, 3)  # [N/8, 8, K/8, 8]
    return grid.reshape(_padded(N), _padded(K))[:N, :K].contiguous()


def int8_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x float32 [M, K], weights packed by ``pack_int8``, scale float32 [N] -> float32 [M, N] (CPU)."""
    return int8_kernel().int8_linear(x, packed, scale, bias)

