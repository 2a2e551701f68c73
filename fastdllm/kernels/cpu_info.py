"""What this machine offers fastdllm's CPU kernels: instruction sets, the C++ compiler, the build,
and which kernel each dtype / quantisation runs on. Nothing here compiles (``fastdllm kernels
status``; ``fastdllm kernels build`` compiles)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from functools import lru_cache

import torch

from ..options import cxx_from_env

# the instruction sets the kernels (or torch's, for bfloat16) can use, as /proc/cpuinfo names them
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "amx_bf16")
VNNI512 = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")  # what the W8A8 kernel's AVX-512 path needs
AMX_INT8 = ("amx_tile", "amx_int8")  # and its AMX path, besides VNNI512 (and Linux's grant of the tile state)


@lru_cache(maxsize=1)
def flags() -> frozenset[str]:
    """The CPU's feature flags (Linux: /proc/cpuinfo); elsewhere only what torch's capability implies."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    cap = torch.backends.cpu.get_cpu_capability()
    return frozenset({"avx2", "fma"} | ({"avx512f", "avx512bw", "avx512vl"} if cap == "AVX512" else set()))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_summary() -> dict[str, bool]:
    have = flags()
    return {f: f in have for f in ISA_FLAGS}


def w8a8_isa() -> str:
    """The W8A8 kernel's best path on this CPU, by the rule cpu_int8a8.cpp applies at run time:
    "amx" (AMX tiles for 4 rows or more, AVX-512 VNNI below), "avx512-vnni" or "avx2"."""
    if not all(f in flags() for f in VNNI512):
        return "avx2"
    return "amx" if all(f in flags() for f in AMX_INT8) else "avx512-vnni"


W8A8_HOW = {"amx": "(AMX tiles for 4+ rows, vpdpbusd below)", "avx512-vnni": "(vpdpbusd)",
            "avx2": "(vpmaddubsw + vpmaddwd)"}


def compiler(cxx: str | None = None, path: str | None = None) -> tuple[str | None, str]:
    """(path to the C++ compiler torch's builder would run, its version line), or (None, why not).
    ``cxx``: the compiler's name (default: $CXX, else c++); ``path``: the search path (default: $PATH)."""
    name = cxx or cxx_from_env() or "c++"
    found = shutil.which(name, path=path)
    if found is None:
        return None, f"no C++ compiler ({name!r} is not on PATH)"
    try:
        out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=20).stdout
        return found, (out.splitlines() or ["?"])[0]
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"the C++ compiler {found} does not run ({e})"


def ninja(path: str | None = None) -> str | None:
    return shutil.which("ninja", path=path)


def kernel_table(native_ok: bool) -> list[tuple[str, str]]:
    """(path, the kernel it runs on) for a float32 CPU model, given whether the native kernels load."""
    bf16 = "avx512_bf16" in flags() or "amx_bf16" in flags()
    rows = [("float32", "torch (MKL / oneDNN float32 GEMM)"),
            ("bfloat16", "torch, native bfloat16" + (" (AVX512-BF16 / AMX)" if bf16 else "")
             + ("" if bf16 else ": no native bfloat16 here, so fastdllm runs float32 instead"))]
    if native_ok:
        rows += [("int8", "fastdllm int8 weight-only, float32 activations (AVX2 + FMA)"),
                 ("int8, int8 activations", f"fastdllm W8A8, {w8a8_isa()} {W8A8_HOW[w8a8_isa()]}"),
                 ("int4", "fastdllm int4 weight-only, float32 activations (AVX2 + FMA); its int8 layers as int8")]
    else:
        rows += [("int8", "torch _weight_int8pack_mm, bfloat16 activations (fallback)"),
                 ("int8, int8 activations", "unavailable without fastdllm's kernels: float activations"),
                 ("int4", "torch _weight_int4pack_mm_for_cpu, bfloat16 activations (fallback)")]
    return rows
