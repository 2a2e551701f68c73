// int4 weight-only matrix product for x86 CPUs with AVX2 and FMA, float32 activations.
//
// Codes come in groups of 32 inputs, each group with a scale s and an offset t (the weight is
// q * s + t, q in 0..15: GGUF Q4_0 / Q4_1 and fastdllm's own int4 both fit). Packed once
// (fastdllm/kernels/native.py, pack_int4) like the int8 kernel's weights: groups of 8 rows, and
// per row and group of 32 inputs 16 bytes whose low nibbles hold inputs 0..15 and high nibbles
// 16..31, so unpacking is a mask and a shift. Half the bytes of int8 for the same rows: decoding
// one token, which streams every weight once, is bound by memory traffic. Each 8-wide weight
// vector is dequantised once (one FMA) and serves two input rows, or, from 4 input rows on, a group of
// 8 weight rows is dequantised once into a float panel that serves them all; every output is one
// 8-lane accumulator fed in the same order whatever the path and tile (batch invariance).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <vector>

#include "cpu_quant.h"

namespace {

constexpr int64_t kGroup = 32;  // inputs per scale / offset
constexpr int64_t kBytes = 16;  // packed bytes per row and group

inline __m256 codes_to_float(__m128i codes) {  // the low 8 bytes, 0..15 each -> 8 floats
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(codes));
}

// One row's 32 weights of a group, q * s + t from its 16 packed bytes, one FMA per vector: w[0..3]
// hold inputs 0..7, 8..15, 16..23, 24..31. The tiles and the panel both dequantise here, so their
// products agree bit for bit.
inline void dequantise(const uint8_t* codes, float s, float t, __m256 w[4]) {
  const __m128i low = _mm_set1_epi8(0x0F);
  const __m256 vs = _mm256_set1_ps(s), vt = _mm256_set1_ps(t);
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
  const __m128i lo = _mm_and_si128(v, low), hi = _mm_and_si128(_mm_srli_epi16(v, 4), low);
  w[0] = _mm256_fmadd_ps(codes_to_float(lo), vs, vt);
  w[1] = _mm256_fmadd_ps(codes_to_float(_mm_srli_si128(lo, 8)), vs, vt);
  w[2] = _mm256_fmadd_ps(codes_to_float(hi), vs, vt);
  w[3] = _mm256_fmadd_ps(codes_to_float(_mm_srli_si128(hi, 8)), vs, vt);
}

// Outputs [m0, m0 + MB) x [n0, n0 + NB), n0..n0 + NB inside one group of 8 rows; NB * MB = 8
// accumulators, in registers (the loops unroll).
template <int NB, int MB>
inline void tile(const float* X, int64_t K, const uint8_t* P, const float* T, const float* B, int64_t N, float* Y,
                 int64_t m0, int64_t n0) {
  const int64_t C = K / kGroup;
  const uint8_t* w = P + ((n0 / 8) * C * 8 + n0 % 8) * kBytes;  // row n0, group 0; a group of 8 rows is 128 bytes
  __m256 acc[NB][MB];
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t c = 0; c < C; ++c) {
#pragma GCC unroll 8
    for (int i = 0; i < NB; ++i) {
      const int64_t n = n0 + i < N ? n0 + i : N - 1;  // padding rows of the last group reuse a real row's (s, t)
      __m256 wv[4];
      dequantise(w + (c * 8 + i) * kBytes, T[(n * C + c) * 2], T[(n * C + c) * 2 + 1], wv);
#pragma GCC unroll 2
      for (int j = 0; j < MB; ++j) {
        const float* x = X + (m0 + j) * K + c * kGroup;
        acc[i][j] = _mm256_fmadd_ps(wv[0], _mm256_loadu_ps(x), acc[i][j]);
        acc[i][j] = _mm256_fmadd_ps(wv[1], _mm256_loadu_ps(x + 8), acc[i][j]);
        acc[i][j] = _mm256_fmadd_ps(wv[2], _mm256_loadu_ps(x + 16), acc[i][j]);
        acc[i][j] = _mm256_fmadd_ps(wv[3], _mm256_loadu_ps(x + 24), acc[i][j]);
      }
    }
  }
  float sums[NB][MB];  // reduced with constant indices: a run-time index would keep acc in memory
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < MB; ++j) sums[i][j] = hsum(acc[i][j]);
  for (int i = 0; i < NB; ++i) {
    const int64_t n = n0 + i;
    if (n >= N) break;
    for (int j = 0; j < MB; ++j) Y[(m0 + j) * N + n] = sums[i][j] + (B ? B[n] : 0.0f);
  }
}

// Products with several input rows (block-diffusion steps, prompt chunks) dequantise a group of 8
// weight rows to float32 once, into a panel W [8][K] (row r's chunk c of 8 inputs at
// W + (r * K / 8 + c) * 8), and run every input row against it; fewer rows dequantise each weight
// vector in the tile that uses it. Both feed each output's 8-lane accumulator the same products in
// the same order, so a row's result is bit for bit the same either way (batch invariance).
// Unpacking 4-bit codes costs more than reading floats from L1 (32 rows of SmolLM2's layers: 2.1x
// faster); the int8 kernel's widening is cheap enough that a float panel made it slower.
constexpr int64_t kPanelRows = 4;  // input rows from which a product takes the panel path

// sums(m, r, s): the dot product of input row m with panel row r over the panel's chunks, for the
// input rows [m0, m0 + MB) and panel rows [r0, r0 + NB)
template <int NB, int MB, class Sink>
inline void panel_tile(const float* X, int64_t K, const float* W, int64_t whole, int64_t m0, int r0, Sink sums) {
  __m256 acc[NB][MB];
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t c = 0; c < whole; ++c) {
    __m256 wv[NB];
#pragma GCC unroll 8
    for (int i = 0; i < NB; ++i) wv[i] = _mm256_loadu_ps(W + ((r0 + i) * whole + c) * 8);
#pragma GCC unroll 4
    for (int j = 0; j < MB; ++j) {
      const __m256 x = _mm256_loadu_ps(X + (m0 + j) * K + c * 8);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], x, acc[i][j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < MB; ++j) sums(m0 + j, r0 + i, hsum(acc[i][j]));
}

// Every input row of X [M, K] against the 8 panel rows: tiles of 4 panel rows x 3 input rows
template <class Sink>
inline void panel_rows(const float* X, int64_t M, int64_t K, const float* W, int64_t whole, Sink sums) {
  int64_t m = 0;
  for (; m + 3 <= M; m += 3)
    for (int r = 0; r < 8; r += 4) panel_tile<4, 3>(X, K, W, whole, m, r, sums);
  if (M - m == 2)
    for (int r = 0; r < 8; r += 4) panel_tile<4, 2>(X, K, W, whole, m, r, sums);
  else if (M - m == 1)
    panel_tile<8, 1>(X, K, W, whole, m, 0, sums);
}

}  // namespace

void int4_gemm(const float* X, int64_t M, int64_t K, const uint8_t* P, const float* T, const float* B, int64_t N,
               float* Y) {
  const int64_t groups = (N + 7) / 8;
  if (M >= kPanelRows) {
    const int64_t C = K / kGroup, whole = K / 8;
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      std::vector<float> panel(8 * whole * 8);  // [8 rows][K]
      for (int64_t g = g0; g < g1; ++g) {
        for (int r = 0; r < 8; ++r) {  // dequantised as the tile does it
          const int64_t n = g * 8 + r < N ? g * 8 + r : N - 1;
          for (int64_t c = 0; c < C; ++c) {
            __m256 wv[4];
            dequantise(P + ((g * C + c) * 8 + r) * kBytes, T[(n * C + c) * 2], T[(n * C + c) * 2 + 1], wv);
            float* dst = panel.data() + (r * whole + c * 4) * 8;
            for (int q = 0; q < 4; ++q) _mm256_storeu_ps(dst + 8 * q, wv[q]);
          }
        }
        panel_rows(X, M, K, panel.data(), whole, [&](int64_t m, int r, float total) {
          const int64_t n = g * 8 + r;
          if (n < N) Y[m * N + n] = total + (B ? B[n] : 0.0f);
        });
      }
    });
    return;
  }
  at::parallel_for(0, groups, 2, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n = g * 8;
      for (int64_t m = 0; m + 2 <= M; m += 2)
        for (int64_t i = 0; i < 8; i += 4) tile<4, 2>(X, K, P, T, B, N, Y, m, n + i);
      if (M % 2 == 1) tile<8, 1>(X, K, P, T, B, N, Y, M - 1, n);
    }
  });
}

int64_t int4_packed_size(int64_t N, int64_t K) { return (N + 7) / 8 * 8 * (K / kGroup) * kBytes; }

torch::Tensor int4_linear(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& params,
                          const c10::optional<torch::Tensor>& bias) {
  check_input(x);
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % kGroup == 0, "int4: the input size must be a multiple of ", kGroup);
  TORCH_CHECK(params.scalar_type() == torch::kFloat32 && params.dim() == 3 && params.size(1) == K / kGroup &&
              params.size(2) == 2 && params.is_contiguous(), "params: float32 [N, K / 32, 2] (scale, offset)");
  const int64_t N = params.size(0);
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.is_contiguous() &&
              packed.numel() == int4_packed_size(N, K), "packed: 4-bit codes [", N, ", ", K, "] as pack_int4 lays them out");
  auto xc = x.contiguous();
  auto y = torch::empty({M, N}, xc.options());
  torch::Tensor bc;
  const float* B = bias_data(bias, N, bc);
  int4_gemm(xc.data_ptr<float>(), M, K, packed.data_ptr<uint8_t>(), params.data_ptr<float>(), B, N,
            y.data_ptr<float>());
  return y;
}
