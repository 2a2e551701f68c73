// Declarations shared by fastdllm's CPU kernels: cpu_int8.cpp, cpu_int4.cpp, cpu_stack.cpp and
// cpu_bindings.cpp (one extension module, built by fastdllm/kernels/native.py).
#pragma once

#include <torch/extension.h>
#include <immintrin.h>

// The sum of the 8 lanes, in a fixed order.
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Y[m, n] = S[n] * sum_k X[m, k] * Q[n, k] + (B ? B[n] : 0); X [M, K] and Y [M, N] float32, Q int8
// [N, K] packed as pack_int8 (native.py) lays it out. Threads split N; a row's sums do not depend on M.
void int8_gemm(const float* X, int64_t M, int64_t K, const int8_t* P, const float* S, const float* B, int64_t N,
               float* Y);

// Bytes of the packed layout of an [N, K] int8 weight.
int64_t int8_packed_size(int64_t N, int64_t K);

// Y[m, n] = sum_k X[m, k] * (q[n, k] * s[n, g] + t[n, g]) + (B ? B[n] : 0), g = k / 32, for 4-bit
// codes q packed as pack_int4 lays them out and T = [N, K / 32, 2] float32 holding (s, t) pairs.
// Same threading and batch invariance as int8_gemm.
void int4_gemm(const float* X, int64_t M, int64_t K, const uint8_t* P, const float* T, const float* B, int64_t N,
               float* Y);

// Bytes of the packed layout of [N, K] 4-bit codes.
int64_t int4_packed_size(int64_t N, int64_t K);

// The checks and bias handling both *_linear entry points share: x must be float32 [M, K] on the
// CPU; the bias (none, or [N]) as float32, kept alive in holder.
void check_input(const torch::Tensor& x);
const float* bias_data(const c10::optional<torch::Tensor>& bias, int64_t N, torch::Tensor& holder);

torch::Tensor int8_linear(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scale,
                          const c10::optional<torch::Tensor>& bias);
torch::Tensor int4_linear(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& params,
                          const c10::optional<torch::Tensor>& bias);

// W8A8: int8 weights [N, K] packed by pack_int8_a8 (native.py) x float32 activations [M, K]
// quantised to int8 per row and block of 32 inputs inside the call (cpu_int8a8.cpp). ``isa``:
// kIsaAuto (the best this CPU has) or one path by name, for tests. Same bits on every path.
// kIsaAuto takes AMX for kAmxMinRows rows or more where the CPU has it, else VNNI, else AVX2.
enum { kIsaAuto = 0, kIsaAvx2 = 1, kIsaVnni512 = 2, kIsaAmx = 3 };
int int8a8_best_isa();        // the best path for many rows
bool int8a8_has_isa(int isa);
const char* isa_name(int isa);
void int8a8_gemm(const float* X, int64_t M, int64_t K, const uint8_t* W, const float* S, const float* B, int64_t N,
                 float* Y, int isa = kIsaAuto);
int64_t int8a8_packed_size(int64_t N, int64_t K);
torch::Tensor int8a8_linear(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scale,
                            const c10::optional<torch::Tensor>& bias, int64_t isa);

void bind_stack(pybind11::module& m);
