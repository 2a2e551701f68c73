// The Python module of fastdllm's CPU kernels (loaded by fastdllm/kernels/native.py).

#include "cpu_quant.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_linear", &int8_linear, "int8 weight-only linear, float32 activations (AVX2)");
  m.def("int4_linear", &int4_linear, "int4 weight-only linear (groups of 32), float32 activations (AVX2)");
  m.def("int8a8_linear", &int8a8_linear, "int8 weights x int8 activations (per row and block of 32), float32 in and out",
        pybind11::arg("x"), pybind11::arg("packed"), pybind11::arg("scale"), pybind11::arg("bias"), pybind11::arg("isa") = 0);
  m.def("int8a8_isa", [] { return std::string(isa_name(int8a8_best_isa())); }, "the W8A8 kernel this CPU runs");
  bind_stack(m);
}
