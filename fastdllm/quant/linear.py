"""Linear layers with int8 or int4 weights (see ``formats``), for inference.

On the CPU, the int8 and int4 layers of a float32 model run on fastdllm's own kernels
(``native``: float32 activations, AVX2) where they can be built. Otherwise the product runs on
torch's weight-only kernels, the ones gpt-fast uses: ``aten._weight_int8pack_mm`` and
``aten._weight_int4pack_mm_for_cpu``. On x86 they are vectorised for bfloat16 input only
(float16 and float32 input take scalar loops, measured 7-40x slower here), so the input is
rounded to bfloat16 for the product, which accumulates in float32 and returns bfloat16; scales
and zero points are kept in bfloat16 for the same kernel. The layer returns the model's dtype,
so norms, attention and the residual stream stay in it. Each output row depends on its own input
row only (batch invariance holds).

On other devices the weight is dequantised to the activation dtype on every call and multiplied
with ``F.linear``: the memory saving at rest holds there, no speed-up is claimed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import native
from .formats import Int4Weight, Int8Weight

CPU_INT8_K_MULTIPLE = 16  # the CPU int8 kernel reads 16 inputs at a time and does not check the tail
CPU_INT4_N_MULTIPLE = 16  # the CPU int4 packing needs whole blocks of 16 output rows
ACTIVATIONS = ("float32", "int8")  # what int8 layers on the native kernel multiply their weights with


def kernel_dtype(device: torch.device | str, dtype: torch.dtype) -> torch.dtype:
    """The activation dtype the quantised product runs in for a model of ``dtype`` on ``device``."""
    if torch.device(device).type == "cpu" and dtype not in (torch.bfloat16, torch.float16):
        return torch.bfloat16
    return dtype


def int8_fits_cpu_kernel(shape: tuple[int, int]) -> bool:
    return shape[1] % CPU_INT8_K_MULTIPLE == 0


def int4_fits(shape: tuple[int, int], group_size: int, device: torch.device | str) -> bool:
    N, K = shape
    return K % group_size == 0 and (torch.device(device).type != "cpu" or N % CPU_INT4_N_MULTIPLE == 0)


class QuantLinear(nn.Module):
    """Shared parts: the bias (in the model's dtype) and the [..., K] -> [..., N] reshaping."""

    format = "?"
    native = False  # runs on fastdllm's own CPU kernel (``native``): float32 in and out, bias included

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None, dtype: torch.dtype,
                 device: torch.device):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.kernel_dtype = kernel_dtype(device, dtype)
        self.bias = None if bias is None else nn.Parameter(bias.to(device, dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # [M, K]
        if self.native and x.device.type == "cpu" and x.dtype == torch.float32:
            y = self.native_linear(rows)  # [M, N], bias added in the kernel
        else:
            y = self.matmul(rows).to(x.dtype)  # [M, N]
            if self.bias is not None:
                y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def matmul(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def native_linear(self, rows: torch.Tensor) -> torch.Tensor:
        """rows float32 [M, K] -> [M, N] on fastdllm's kernel, bias included (layers with ``native``)."""
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] the product uses (after its scales were cast for the kernel)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"kernel_dtype={self.kernel_dtype}")


def _kernel_input(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``rows`` in ``dtype``, contiguous and freshly allocated where needed (the int8 kernel
    uses aligned loads: a view at an odd offset would crash it)."""
    if rows.dtype != dtype:
        return rows.to(dtype).contiguous()
    if not rows.is_contiguous() or rows.data_ptr() % 64:
        return rows.clone(memory_format=torch.contiguous_format)
    return rows


class Int8Linear(QuantLinear):
    """``activations``: "float32" (weight-only: the input stays float32) or "int8" (W8A8: fastdllm's
    kernel quantises each input row per block of 32 inputs and multiplies in integers, on
    AVX-512 VNNI where the CPU has it, else AVX2; ``native.int8a8_linear``). "int8" applies to
    layers on the native kernel only; the others keep float activations."""

    format = "int8"

    def __init__(self, weight: Int8Weight, bias: torch.Tensor | None, dtype: torch.dtype,
                 device: torch.device | str, activations: str = "float32", use_native: bool = True):
        device = torch.device(device)
        N, K = weight.shape
        super().__init__(K, N, bias, dtype, device)
        # fastdllm's kernel: float32 models on the CPU (it takes any shape), unless the runtime options say no
        self.native = use_native and device.type == "cpu" and dtype == torch.float32 and native.available()
        if self.native:
            self.kernel_dtype = torch.float32
        q = weight.q.to(device).contiguous()  # [N, K] int8
        # the native kernel's own layout (native.pack_int8), else row-major
        self.packed = self.native
        self.activations = "float32"
        self.register_buffer("qweight", native.pack_int8(q) if self.packed else q.clone())
        self.register_buffer("scales", weight.scale.to(device, self.kernel_dtype))  # [N]
        self.cpu_kernel = device.type == "cpu" and int8_fits_cpu_kernel((N, K))
        self.set_activations(activations)

    def set_activations(self, activations: str) -> bool:
        """Switch between "float32" and "int8" activations (repacks the weight); returns whether the
        layer now runs with ``activations`` (int8 needs the native kernel and weights in -127..127)."""
        if activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {ACTIVATIONS}, not {activations!r}")
        if activations == self.activations:
            return True
        q = self.weight_rows()  # [N, K]
        if activations == "int8" and (not self.native or (q.numel() and int(q.min()) < -127)):
            return False
        self.activations = activations
        self.qweight = native.pack_int8_a8(q) if activations == "int8" else native.pack_int8(q)
        return True

    def weight_rows(self) -> torch.Tensor:
        """The int8 weight as [N, K] (a copy when it is held packed)."""
        if self.packed and self.activations == "int8":
            return native.unpack_int8_a8(self.qweight, self.out_features, self.in_features)
        if self.packed:
            return native.unpack_int8(self.qweight, self.out_features, self.in_features)
        return self.qweight

    def native_linear(self, rows: torch.Tensor) -> torch.Tensor:
        if self.activations == "int8":
            return native.int8a8_linear(rows, self.qweight, self.scales, self.bias)
        return native.int8_linear(rows, self.qweight, self.scales, self.bias)

    def matmul(self, rows: torch.Tensor) -> torch.Tensor:
        kd = self.kernel_dtype
        scales = self.scales.to(kd)
        if self.cpu_kernel and rows.device.type == "cpu":
            return torch.ops.aten._weight_int8pack_mm(_kernel_input(rows, kd), self.weight_rows(), scales)  # [M, N]
        return F.linear(rows.to(kd), self.weight_rows().to(kd)) * scales  # [M, N]

    def dequantize(self) -> torch.Tensor:
        return self.weight_rows().float() * self.scales.float()[:, None]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activations={self.activations}"


class Int4Linear(QuantLinear):
    """``layout``: "native" (fastdllm's kernel: float32 models on the CPU, groups of 32; the default
    where it can run), "cpu" (torch's CPU kernel's packing; the CPU default otherwise) or "plain"
    (two codes per byte, dequantised per call; the default elsewhere)."""

    format = "int4"

    def __init__(self, weight: Int4Weight, bias: torch.Tensor | None, dtype: torch.dtype,
                 device: torch.device | str, layout: str | None = None, use_native: bool = True):
        device = torch.device(device)
        N, K = weight.shape
        super().__init__(K, N, bias, dtype, device)
        self.group_size = weight.group_size
        if layout is None:
            native_ok = (use_native and device.type == "cpu" and dtype == torch.float32
                         and native.int4_fits(K, self.group_size) and native.available())
            layout = "native" if native_ok else "cpu" if device.type == "cpu" else "plain"
        self.layout = layout
        self.native = layout == "native"
        if self.native:
            self.kernel_dtype = torch.float32
            self.register_buffer("qweight", native.pack_int4(weight.q.to(torch.uint8)))  # flat, the kernel's layout
            self.register_buffer("scale_zero", native.int4_params(weight.scale, weight.zero))  # [N, K/G, 2]: scale, offset
            return
        kd = self.kernel_dtype
        if self.layout == "cpu":
            q = weight.q.to(torch.int32)  # [N, K], 0..15
            self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
            scale_zero = torch.stack([weight.scale.t(), weight.zero.t()], dim=-1)  # [K/G, N, 2]
            self.register_buffer("scale_zero", scale_zero.to(kd).contiguous())
        else:  # two codes per byte: low nibble even k, high nibble odd k
            q = weight.q.to(torch.uint8)
            self.register_buffer("qweight", (q[:, 0::2] | (q[:, 1::2] << 4)).to(device))  # [N, K/2]
            scale_zero = torch.stack([weight.scale, weight.zero], dim=-1)  # [N, K/G, 2]
            self.register_buffer("scale_zero", scale_zero.to(device, kd))

    def native_linear(self, rows: torch.Tensor) -> torch.Tensor:
        return native.int4_linear(rows, self.qweight, self.scale_zero, self.bias)

    def matmul(self, rows: torch.Tensor) -> torch.Tensor:
        kd = self.kernel_dtype
        if self.layout == "native":  # another dtype or device than the kernel's: the dequantised weight
            return F.linear(rows.to(kd), self.dequantize().to(kd))
        if self.layout == "cpu":
            if rows.device.type != "cpu":
                raise RuntimeError("int4 weights were packed for the CPU; load the model on the device it runs on")
            return torch.ops.aten._weight_int4pack_mm_for_cpu(rows.to(kd).contiguous(), self.qweight, self.group_size,
                                                              self.scale_zero.to(kd))  # [M, N]
        return F.linear(rows.to(kd), self._dequantize(kd))

    def _dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        N, K = self.out_features, self.in_features
        q = torch.stack([self.qweight & 15, self.qweight >> 4], dim=-1).reshape(N, K // self.group_size, -1)
        sz = self.scale_zero.to(dtype)  # [N, K/G, 2]
        return ((q.to(dtype) - 8) * sz[..., :1] + sz[..., 1:]).reshape(N, K)  # [N, K]

    def dequantize(self) -> torch.Tensor:
        N, K = self.out_features, self.in_features
        if self.layout == "native":  # code * scale + offset, as the kernel computes it
            q = native.unpack_int4(self.qweight, N, K).float().view(N, K // self.group_size, -1)
            return (q * self.scale_zero[..., :1] + self.scale_zero[..., 1:]).reshape(N, K)
        if self.layout != "cpu":
            return self._dequantize(torch.float32)
        # the CPU packing is the kernel's own layout: multiply the identity in float32 to read it back exactly
        eye = torch.eye(self.in_features, dtype=torch.float32, device=self.qweight.device)
        w_t = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.qweight, self.group_size, self.scale_zero.float())
        return w_t.t().contiguous()  # [N, K]


def quantized_linear(weight, bias: torch.Tensor | None, mode: str, dtype: torch.dtype, device: torch.device | str,
                     group_size: int = 32, use_native: bool = True) -> QuantLinear:
    """A quantised layer for ``weight`` (a float tensor [N, K] or an ``Int8Weight`` / ``Int4Weight``).

    ``mode="int4"`` keeps an ``Int4Weight`` as it is (e.g. GGUF Q4 blocks) and quantises floats
    groupwise; a layer whose shape the int4 kernel cannot take becomes int8. ``mode="int8"``
    quantises everything per channel (an ``Int4Weight`` is dequantised first). ``use_native``:
    False keeps the layer off fastdllm's native kernels (``RuntimeOptions.native="off"``).
    """
    if mode not in ("int8", "int4"):
        raise ValueError(f"unknown quantisation {mode!r}")
    if mode == "int4" and isinstance(weight, Int4Weight) and int4_fits(weight.shape, weight.group_size, device):
        return Int4Linear(weight, bias, dtype, device, use_native=use_native)
    if isinstance(weight, Int8Weight):
        return Int8Linear(weight, bias, dtype, device, use_native=use_native)
    if isinstance(weight, Int4Weight):
        weight = weight.dequantize()
    if mode == "int4" and int4_fits(tuple(weight.shape), group_size, device):
        return Int4Linear(Int4Weight.from_float(weight, group_size), bias, dtype, device, use_native=use_native)
    return Int8Linear(Int8Weight.from_float(weight), bias, dtype, device, use_native=use_native)
