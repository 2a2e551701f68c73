"""fastdllm's own CPU kernels for int8 and int4 weights with float32 activations.

torch's int8 and int4 weight-only kernels are vectorised for bfloat16 input only on x86;
rounding the activations to bfloat16 costs accuracy on small models and float32 input takes a
scalar loop. fastdllm's kernels (AVX2 + FMA: ``cpu_int8.cpp``, ``cpu_int4.cpp``) keep float32
activations and take weights packed once into their own layout (``pack_int8``, ``pack_int4``);
``cpu_stack.cpp`` runs a quantised model's whole layer stack on them (``stack.py``). They are one
extension module, compiled with torch's extension builder the first time it is needed (about two
minutes, then cached under ``TORCH_EXTENSIONS_DIR``; ``fastdllm kernels build`` compiles it now).
``int8a8_linear`` (``cpu_int8a8.cpp``) multiplies int8 weights by int8 activations, quantised
per row and block of 32 inside the call, on AVX-512 VNNI where the CPU has it (chosen at run time,
``cpu_int8a8_vnni.cpp``) and on AVX2 elsewhere, with the same bits on both. Without a compiler or AVX2, or with
``RuntimeOptions(native="off")`` (``FASTDLLM_NATIVE=0``), quantised layers use torch's kernels with
bfloat16 activations instead. The extension is loaded once per process (a C++ module cannot be
unloaded), so whether it is there is process state; whether a model uses it is that model's
runtime option (``use_native`` of its quantised layers).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from pathlib import Path

import torch

_log = logging.getLogger(__name__)
CSRC = Path(__file__).with_name("csrc")  # the C++ sources, compiled on first use
SOURCES = [CSRC / n for n in ("cpu_int8.cpp", "cpu_int4.cpp", "cpu_int8a8.cpp", "cpu_int8a8_vnni.cpp",
                              "cpu_int8a8_amx.cpp", "cpu_stack.cpp", "cpu_bindings.cpp")]
HEADERS = [CSRC / n for n in ("cpu_quant.h", "cpu_a8.h")]
HEADER = HEADERS[0]
_state: dict[str, object] = {}


def build_name() -> str:
    """The name the build is cached under. The header's hash is in it, so editing only the header
    rebuilds too (torch's extension builder hashes the sources it compiles, not what they include)."""
    if "name" not in _state:
        digest = hashlib.sha1(b"".join(p.read_bytes() for p in [*SOURCES, *HEADERS])).hexdigest()[:10]
        _state["name"] = f"fastdllm_cpu_quant_{digest}"
    return _state["name"]


def cpu_supported() -> bool:
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


STALE_LOCK_SECONDS = 600  # a build takes about two minutes on 2 cores; a lock this old was left by a killed build


def build_dir() -> Path | None:
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(build_name(), False))
    except Exception:  # a private helper of torch's: never let it decide anything else
        return None


def built() -> bool:
    """Whether a build is cached (only to say so before a long compile)."""
    d = build_dir()
    return d is not None and (d / f"{build_name()}.so").exists()


def clear_stale_lock() -> None:
    """torch's builder waits, without end, for the lock file of a build that was killed: remove it
    once it is clearly older than any build."""
    d = build_dir()
    lock = None if d is None else d / "lock"
    try:
        if lock is not None and time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            _log.warning("fastdllm: removing a stale build lock %s (left by an interrupted build)", lock)
            lock.unlink()
    except OSError:
        pass


def kernels(verbose: bool = False):
    """The compiled extension module, or None where it cannot be used (reason logged once).
    ``verbose``: show the compiler's progress (``fastdllm kernels build``)."""
    if "module" in _state:
        return _state["module"]
    module, why = None, None
    if not cpu_supported():
        why = f"the CPU has no AVX2 (torch reports {torch.backends.cpu.get_cpu_capability()})"
    elif not built() and unbuildable() is not None:
        why = unbuildable()
    else:
        try:
            from torch.utils.cpp_extension import load

            clear_stale_lock()
            if not built():
                print("fastdllm: compiling the int8/int4 CPU kernels (once, about two minutes)", file=sys.stderr, flush=True)
            # -fopenmp: at::parallel_for is a header template, serial without it; no contraction of
            # a * b + c into FMAs at the compiler's choice, so every row is rounded the same way.
            # AVX2 + FMA for every source; cpu_int8a8_vnni.cpp turns on AVX-512 VNNI for itself
            # (a pragma) and runs only where the CPU has it (checked at run time).
            flags = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-ffp-contract=off"]
            module = load(build_name(), [str(p) for p in SOURCES], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                          verbose=verbose)
        except Exception as e:  # no compiler, no ninja, ...: torch's kernel still works
            last = (str(e).strip().splitlines() or [""])[-1][:200]
            why = f"it could not be built ({type(e).__name__}: {last})"
    if why:
        _log.warning("fastdllm: quantised layers use torch's bfloat16-input kernels: %s", why)
        _state["why"] = why
    _state["module"] = module
    return module


def unbuildable() -> str | None:
    """Why the kernels cannot be compiled here (no C++ compiler or no ninja), or None."""
    from . import cpu_info

    cxx, what = cpu_info.compiler()
    if cxx is None:
        return what
    if cpu_info.ninja() is None:
        return "no ninja (torch's extension builder needs it: pip install ninja)"
    return None


def why_unavailable() -> str | None:
    """After ``kernels()``: why the native kernels are not used, or None when they are."""
    return _state.get("why")


def available() -> bool:
    return kernels() is not None


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
    return kernels().int8_linear(x, packed, scale, bias)


INT4_GROUP = 32  # inputs per scale and offset


def int4_fits(K: int, group_size: int) -> bool:
    return group_size == INT4_GROUP and K % INT4_GROUP == 0


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """4-bit codes [N, K] (uint8, 0..15) -> the kernel's layout: [ceil(N/8), K/32, 8 rows, 16 bytes],
    flat; byte b of a row's group holds input b in its low nibble and input 16 + b in its high one."""
    N, K = q.shape
    padded = torch.zeros(_padded(N), K, dtype=torch.uint8, device=q.device)
    padded[:N] = q
    halves = padded.view(_padded(N), K // INT4_GROUP, 2, INT4_GROUP // 2)  # [N, K/32, 2, 16]
    packed = halves[:, :, 0] | (halves[:, :, 1] << 4)  # [N, K/32, 16]
    return packed.view(-1, GROUP, K // INT4_GROUP, INT4_GROUP // 2).permute(0, 2, 1, 3).contiguous().flatten()


def unpack_int4(packed: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """The inverse of ``pack_int4``: uint8 codes [N, K]."""
    grid = packed.view(-1, K // INT4_GROUP, GROUP, INT4_GROUP // 2).permute(0, 2, 1, 3)  # [N/8, 8, K/32, 16]
    rows = grid.reshape(_padded(N), K // INT4_GROUP, INT4_GROUP // 2)
    return torch.stack([rows & 15, rows >> 4], dim=2).reshape(_padded(N), K)[:N].contiguous()


def int4_params(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(scale, offset) per row and group, float32 [N, K/32, 2]: the weight is code * scale + offset
    (offset = zero - 8 * scale for ``Int4Weight``'s (code - 8) * scale + zero)."""
    scale, zero = scale.float(), zero.float()
    return torch.stack([scale, zero - 8 * scale], dim=-1).contiguous()


def int4_linear(x: torch.Tensor, packed: torch.Tensor, params: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x float32 [M, K], codes packed by ``pack_int4``, ``int4_params`` [N, K/32, 2] -> float32 [M, N] (CPU)."""
    return kernels().int4_linear(x, packed, params, bias)



A8_BLOCK = 32  # activation inputs per scale in the W8A8 kernels
A8_OUTPUTS = 16  # outputs per packed group of the W8A8 layout
ISAS = {"auto": 0, "avx2": 1, "avx512-vnni": 2, "amx": 3}  # the W8A8 kernel's paths (cpu_quant.h)


def pack_int8_a8(q: torch.Tensor) -> torch.Tensor:
    """int8 [N, K] (-127..127) -> the W8A8 kernels' layout: uint8 q + 128, [ceil(N/16)][Kp/4][16][4]
    flat (Kp = K rounded up to 32, zero weights padding): 4 inputs of 16 outputs per 64 bytes, as
    one vpdpbusd reads them."""
    if q.numel() and int(q.min()) < -127:
        raise ValueError("pack_int8_a8: int8 weights must lie in -127..127")
    N, K = q.shape
    Np, Kp = -(-N // A8_OUTPUTS) * A8_OUTPUTS, -(-K // A8_BLOCK) * A8_BLOCK
    padded = torch.zeros(Np, Kp, dtype=torch.int16)
    padded[:N, :K] = q.to(torch.int16)
    biased = (padded + 128).to(torch.uint8)  # [Np, Kp]
    return biased.view(Np // A8_OUTPUTS, A8_OUTPUTS, Kp // 4, 4).permute(0, 2, 1, 3).contiguous().flatten()


def unpack_int8_a8(packed: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """The inverse of ``pack_int8_a8``: int8 [N, K]."""
    Kp = -(-K // A8_BLOCK) * A8_BLOCK
    grid = packed.view(-1, Kp // 4, A8_OUTPUTS, 4).permute(0, 2, 1, 3).reshape(-1, Kp)  # [Np, Kp]
    return (grid[:N, :K].to(torch.int16) - 128).to(torch.int8)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the W8A8 kernels do to float32 rows [M, K], in torch: int8 [M, Kp] per block of 32
    (scale max|x| / 127, round half to even, zero-padded) and the scales float32 [M, Kp/32]."""
    M, K = x.shape
    Kp = -(-K // A8_BLOCK) * A8_BLOCK
    xb = torch.zeros(M, Kp, dtype=torch.float32)
    xb[:, :K] = x
    xb = xb.view(M, Kp // A8_BLOCK, A8_BLOCK)
    amax = xb.abs().amax(-1)  # [M, Kp/32]
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros(()))
    q = torch.round(xb * inv[..., None]).clamp(-127, 127).to(torch.int8).view(M, Kp)
    return q, amax / 127.0


def int8a8_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                  isa: str = "auto") -> torch.Tensor:
    """x float32 [M, K] quantised per row and block of 32, weights packed by ``pack_int8_a8``, scale
    float32 [N] -> float32 [M, N] (CPU). ``isa``: "auto" (the best kernel this CPU has) or a path
    of ``ISAS`` (tests); every path gives the same bits."""
    return kernels().int8a8_linear(x, packed, scale, bias, ISAS[isa])
