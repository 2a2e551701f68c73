"""Which floating-point dtype a model runs in, and whether this CPU computes bfloat16 natively.

``dtype="auto"`` means bfloat16 on CUDA and float32 on the CPU. On the CPU, bfloat16 pays only
where the hardware multiplies it natively (x86 ``avx512_bf16`` or AMX); elsewhere every bfloat16
matmul is emulated through float32 and is slower than float32 itself, so a bfloat16 request on
such a CPU runs in float32 instead, with one logged warning per process. ``load_checkpoint``
itself takes the dtype it is given; this policy belongs to ``fastdllm.load`` and the CLI.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

_log = logging.getLogger("fastdllm")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names
_warned = False


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), detected once."""
    flags = cpu_flags()
    if flags:
        return any(f in flags for f in NATIVE_BF16_FLAGS)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's own cpuinfo, where no /proc
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def auto_dtype(device: torch.device | str) -> torch.dtype:
    """``dtype="auto"``: bfloat16 on CUDA, float32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def resolve_dtype(dtype: torch.dtype, device: torch.device | str, native_bf16: bool | None = None) -> torch.dtype:
    """The dtype to run in: ``dtype``, except bfloat16 on a CPU without native bfloat16 -> float32.

    ``native_bf16`` overrides the detection (tests inject both answers).
    """
    global _warned
    if dtype != torch.bfloat16 or torch.device(device).type != "cpu":
        return dtype
    if native_bf16 is None:
        native_bf16 = cpu_has_native_bf16()
    if native_bf16:
        return dtype
    if not _warned:
        _warned = True
        _log.warning("bfloat16 requested, but this CPU has no native bfloat16 (avx512_bf16 or AMX) and emulating "
                     "it is slower than float32: running in float32")
    return torch.float32
