// Shared between the int8 kernel (cpu_int8.cpp) and the int8 layer stack (cpu_int8_stack.cpp).
#pragma once

#include <torch/extension.h>

// Y[m, n] = S[n] * sum_k X[m, k] * Q[n, k] + (B ? B[n] : 0); X [M, K] and Y [M, N] float32, Q int8
// [N, K] packed as pack_int8 (native.py) lays it out. Threads split N; a row's sums do not depend on M.
void int8_gemm(const float* X, int64_t M, int64_t K, const int8_t* P, const float* S, const float* B, int64_t N,
               float* Y);

// Bytes of the packed layout of an [N, K] int8 weight.
int64_t int8_packed_size(int64_t N, int64_t K);

void bind_int8_stack(pybind11::module& m);
