// int8 weight-only matrix product for x86 CPUs with AVX2 and FMA, float32 activations.
//
// y[m, n] = scale[n] * sum_k x[m, k] * q[n, k] (+ bias[n]), x and y float32, q int8.
// torch's own int8 weight-only kernel is vectorised for bfloat16 input only: float32 input
// takes a scalar loop, and rounding activations to bfloat16 costs accuracy on small models.
// Input rows go in pairs, each weight row is read from memory once per call (then from L1).
// A row's result is summed in the same order whatever the number of rows (batch invariance).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "cpu_int8.h"

namespace {

constexpr int64_t kLanes = 8;    // floats per AVX2 register
constexpr int64_t kStep = 4 * kLanes;  // four accumulators per input row (hides FMA latency)

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256 widen(const int8_t* p) {  // 8 int8 -> 8 float
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// Accumulators in named registers (GCC keeps arrays of them on the stack in the hot loop).
struct Acc {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  inline void step(const float* x, const int8_t* w, int64_t k) {  // kStep products starting at k
    a0 = _mm256_fmadd_ps(widen(w + k), _mm256_loadu_ps(x + k), a0);
    a1 = _mm256_fmadd_ps(widen(w + k + kLanes), _mm256_loadu_ps(x + k + kLanes), a1);
    a2 = _mm256_fmadd_ps(widen(w + k + 2 * kLanes), _mm256_loadu_ps(x + k + 2 * kLanes), a2);
    a3 = _mm256_fmadd_ps(widen(w + k + 3 * kLanes), _mm256_loadu_ps(x + k + 3 * kLanes), a3);
  }
  inline float finish(const float* x, const int8_t* w, int64_t k, int64_t K) {  // the tails, then the sum
    for (; k + kLanes <= K; k += kLanes) a0 = _mm256_fmadd_ps(widen(w + k), _mm256_loadu_ps(x + k), a0);
    float total = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; k < K; ++k) total += x[k] * static_cast<float>(w[k]);
    return total;
  }
};

// One input row with one weight row.
inline float dot1(const float* x, const int8_t* w, int64_t K) {
  Acc a;
  int64_t k = 0;
  for (; k + kStep <= K; k += kStep) a.step(x, w, k);
  return a.finish(x, w, k, K);
}

// Two input rows with one weight row: the same sums as two dot1 calls, one pass over w.
inline void dot2(const float* x0, const float* x1, const int8_t* w, int64_t K, float* out) {
  Acc a, b;
  int64_t k = 0;
  for (; k + kStep <= K; k += kStep) {
    a.step(x0, w, k);
    b.step(x1, w, k);
  }
  out[0] = a.finish(x0, w, k, K);
  out[1] = b.finish(x1, w, k, K);
}

}  // namespace

void int8_gemm(const float* X, int64_t M, int64_t K, const int8_t* Q, const float* S, const float* B, int64_t N,
               float* Y) {
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    float out[2];
    for (int64_t n = n0; n < n1; ++n) {
      const int8_t* w = Q + n * K;
      const float b = B ? B[n] : 0.0f;
      int64_t m = 0;
      for (; m + 2 <= M; m += 2) {  // rows in pairs: each weight row is widened once per pair
        dot2(X + m * K, X + (m + 1) * K, w, K, out);
        Y[m * N + n] = out[0] * S[n] + b;
        Y[(m + 1) * N + n] = out[1] * S[n] + b;
      }
      if (m < M) Y[m * N + n] = dot1(X + m * K, w, K) * S[n] + b;
    }
  });
}

torch::Tensor int8_linear(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale,
                          const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2,
              "x: float32 [M, K] on the CPU");
  TORCH_CHECK(q.scalar_type() == torch::kInt8 && q.dim() == 2 && q.size(1) == x.size(1), "q: int8 [N, K]");
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32 && scale.numel() == q.size(0), "scale: float32 [N]");
  auto xc = x.contiguous();
  auto qc = q.contiguous();
  auto sc = scale.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1), N = qc.size(0);
  auto y = torch::empty({M, N}, xc.options());
  torch::Tensor bc;
  const float* B = nullptr;
  if (bias.has_value() && bias->defined()) {
    bc = bias->to(torch::kFloat32).contiguous();
    TORCH_CHECK(bc.numel() == N, "bias: [N]");
    B = bc.data_ptr<float>();
  }
  int8_gemm(xc.data_ptr<float>(), M, K, qc.data_ptr<int8_t>(), sc.data_ptr<float>(), B, N, y.data_ptr<float>());
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_linear", &int8_linear, "int8 weight-only linear, float32 activations (AVX2)");
  bind_int8_stack(m);
}
