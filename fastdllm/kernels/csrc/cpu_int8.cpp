// int8 weight-only matrix product for x86 CPUs with AVX2 and FMA, float32 activations.
//
// y[m, n] = scale[n] * sum_k x[m, k] * q[n, k] (+ bias[n]), x and y float32, q int8.
// torch's own int8 weight-only kernel is vectorised for bfloat16 input only: float32 input
// takes a scalar loop, and rounding activations to bfloat16 costs accuracy on small models.
//
// Weights are packed once (fastdllm/kernels/native.py, pack_int8): groups of 8 rows, and within
// a group 8 inputs of each row in turn, [ceil(N/8)][ceil(K/8)][8 rows][8], zero-padded. One
// input row then reads a group as one sequential stream with eight sums in flight, and several
// input rows share each widened weight vector (register tiles of 4 weight rows x 2 input rows;
// 2 x 4 was no faster here and slower at 4 rows).
// Every output is one 8-lane accumulator fed chunk by chunk in the same order whatever the
// tile, so a row's result does not depend on how many rows come with it (batch invariance).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "cpu_quant.h"

namespace {

// Decoding one token streams every weight once: asking for the bytes 4 KB ahead of the current
// chunk kept more reads in flight than the hardware prefetcher alone (SmolLM2's 30 layers at one
// query row, 6.1-6.8 against 5.3-6.4 ms, three interleaved runs; 1 KB ahead gained about half).
constexpr int64_t kPrefetchBytes = 4096;

inline __m256 widen(const int8_t* p) {  // 8 int8 -> 8 float
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// Outputs [m0, m0 + MB) x [n0, n0 + NB), n0..n0 + NB inside one group of 8. NB * MB = 8
// accumulators (in registers: the loops unroll), leaving room for weights and an input vector.
template <int NB, int MB>
inline void tile(const float* X, int64_t K, const int8_t* P, const float* S, const float* B, int64_t N, float* Y,
                 int64_t m0, int64_t n0) {
  const int64_t C = (K + 7) / 8, whole = K / 8;
  const int8_t* w = P + ((n0 / 8) * C * 8 + n0 % 8) * 8;  // row n0, chunk 0; a chunk is 64 bytes
  __m256 acc[NB][MB];
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t c = 0; c < whole; ++c) {
    _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + kPrefetchBytes), _MM_HINT_T0);
    __m256 wv[NB];
#pragma GCC unroll 8
    for (int i = 0; i < NB; ++i) wv[i] = widen(w + c * 64 + i * 8);
#pragma GCC unroll 4
    for (int j = 0; j < MB; ++j) {
      const __m256 x = _mm256_loadu_ps(X + (m0 + j) * K + c * 8);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], x, acc[i][j]);
    }
  }
  // reduced with constant indices only: an accumulator indexed at run time would live in memory
  float sums[NB][MB];
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < MB; ++j) sums[i][j] = hsum(acc[i][j]);
  for (int i = 0; i < NB; ++i) {
    const int64_t n = n0 + i;
    if (n >= N) break;  // padding rows of the last group
    for (int j = 0; j < MB; ++j) {
      const int64_t m = m0 + j;
      float total = sums[i][j];
      for (int64_t k = whole * 8; k < K; ++k) total += X[m * K + k] * static_cast<float>(w[whole * 64 + i * 8 + k % 8]);
      Y[m * N + n] = total * S[n] + (B ? B[n] : 0.0f);
    }
  }
}

}  // namespace

void int8_gemm(const float* X, int64_t M, int64_t K, const int8_t* P, const float* S, const float* B, int64_t N,
               float* Y) {
  const int64_t groups = (N + 7) / 8;
  at::parallel_for(0, groups, 2, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {  // a group's weights stay in L1 across the input rows
      const int64_t n = g * 8;
      for (int64_t m = 0; m + 2 <= M; m += 2)  // two input rows share each widened weight vector
        for (int64_t i = 0; i < 8; i += 4) tile<4, 2>(X, K, P, S, B, N, Y, m, n + i);
      if (M % 2 == 1) tile<8, 1>(X, K, P, S, B, N, Y, M - 1, n);  // one row: eight sums in flight
    }
  });
}

void check_input(const torch::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2,
              "x: float32 [M, K] on the CPU");
}

const float* bias_data(const c10::optional<torch::Tensor>& bias, int64_t N, torch::Tensor& holder) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  holder = bias->to(torch::kFloat32).contiguous();
  TORCH_CHECK(holder.numel() == N, "bias: [N]");
  return holder.data_ptr<float>();
}

int64_t int8_packed_size(int64_t N, int64_t K) { return (N + 7) / 8 * 8 * ((K + 7) / 8 * 8); }

torch::Tensor int8_linear(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scale,
                          const c10::optional<torch::Tensor>& bias) {
  check_input(x);
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32 && scale.dim() == 1, "scale: float32 [N]");
  const int64_t M = x.size(0), K = x.size(1), N = scale.numel();
  TORCH_CHECK(packed.scalar_type() == torch::kInt8 && packed.is_contiguous() &&
              packed.numel() == int8_packed_size(N, K), "packed: int8 weights [", N, ", ", K, "] as pack_int8 lays them out");
  auto xc = x.contiguous();
  auto sc = scale.contiguous();
  auto y = torch::empty({M, N}, xc.options());
  torch::Tensor bc;
  const float* B = bias_data(bias, N, bc);
  int8_gemm(xc.data_ptr<float>(), M, K, packed.data_ptr<int8_t>(), sc.data_ptr<float>(), B, N, y.data_ptr<float>());
  return y;
}
