// The Python module of fastdllm's CPU kernels (loaded by fastdllm/quant/native.py).

#include "cpu_quant.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_linear", &int8_linear, "int8 weight-only linear, float32 activations (AVX2)");
  m.def("int4_linear", &int4_linear, "int4 weight-only linear (groups of 32), float32 activations (AVX2)");
  bind_stack(m);
}
