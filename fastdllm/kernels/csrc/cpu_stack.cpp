// The decoder layers of a quantised model in one call per forward (fastdllm/kernels/stack.py).
//
// In eager PyTorch a decode step spends longer dispatching each layer's dozen small ops than
// in the quantised products themselves. Here all layers of a forward run in C++: RMSNorm, the
// four products (int8_gemm or int4_gemm, as each layer is quantised), rotary embedding (cos and
// sin of each row's position read from a table made by the model's own RotaryEmbedding, or from
// libm past its end), the KV-cache write, attention of each query row over its own span of the
// cache, SiLU gating, the residual adds, and the model's final norm.
// Float32 throughout; results equal the eager quantised path up to rounding (the summation order
// of norms and attention differs; the products are the same kernels).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_quant.h"

namespace {

constexpr int kPerLayer = 14;  // tensors per layer in the constructor's list

inline float dot(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float total = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) total += a[i] * b[i];
  return total;
}

// The 8 lane sums of v0..v7 at once, each with hsum's own additions ((l0 + l4) + (l2 + l6)) +
// ((l1 + l5) + (l3 + l7)), so that every sum has the bits hsum gives it (additions commute exactly).
inline __m256 hsum8(const __m256 v[8]) {
  __m256 s[4];
  for (int k = 0; k < 4; ++k)  // [v_k's lanes i + (i + 4), i < 4 | the same of v_{k+4}]
    s[k] = _mm256_add_ps(_mm256_permute2f128_ps(v[k], v[k + 4], 0x20), _mm256_permute2f128_ps(v[k], v[k + 4], 0x31));
  auto pairs = [](__m256 a, __m256 b) {  // [(a0 + a2), (a1 + a3), (b0 + b2), (b1 + b3)] per half
    const __m256d ad = _mm256_castps_pd(a), bd = _mm256_castps_pd(b);
    return _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(ad, bd)), _mm256_castpd_ps(_mm256_unpackhi_pd(ad, bd)));
  };
  const __m256 t01 = pairs(s[0], s[1]), t23 = pairs(s[2], s[3]);
  return _mm256_add_ps(_mm256_shuffle_ps(t01, t23, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm256_shuffle_ps(t01, t23, _MM_SHUFFLE(3, 1, 3, 1)));
}

// p[0, 8) = scale * dot(q, key_k, D) for the 8 keys key_k = keys + k * stride, with dot's bits
// (dot's two accumulators, then one hsum8); D a multiple of 16.
inline void scores8(const float* q, const float* keys, int64_t stride, int64_t D, float scale, float* p) {
  __m256 v[8];
  for (int k0 = 0; k0 < 8; k0 += 4) {  // 4 keys' chains interleaved: 8 FMAs in flight
    __m256 s0[4], s1[4];
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) s0[k] = s1[k] = _mm256_setzero_ps();
    for (int64_t i = 0; i < D; i += 16) {
      const __m256 q0 = _mm256_loadu_ps(q + i), q1 = _mm256_loadu_ps(q + i + 8);
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const float* b = keys + (k0 + k) * stride + i;
        s0[k] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(b), s0[k]);
        s1[k] = _mm256_fmadd_ps(q1, _mm256_loadu_ps(b + 8), s1[k]);
      }
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) v[k0 + k] = _mm256_add_ps(s0[k], s1[k]);
  }
  _mm256_storeu_ps(p, _mm256_mul_ps(hsum8(v), _mm256_set1_ps(scale)));
}

// scores8 and accumulate_block on AVX-512, with their bits: a 16-lane FMA over inputs [i, i + 16)
// does, lane for lane, what scores8's two 8-lane accumulators do over [i, i + 8) and [i + 8, i + 16)
// (the low half is s0, the high half s1), and what two of accumulate_block's 8-lane chunks do; only
// the instruction count halves. Called where the CPU has AVX-512F (kAvx512 below).
#define FASTDLLM_AVX512 __attribute__((target("avx512f,avx2,fma")))

// Q queries' scores8 at once (Q <= 3: 24 accumulators), each key's inputs loaded once for all
template <int Q>
FASTDLLM_AVX512 void scores8_avx512(const float* const* q, const float* keys, int64_t stride, int64_t D, float scale,
                                    float* const* p) {
  __m512 s[Q][8];
#pragma GCC unroll 3
  for (int t = 0; t < Q; ++t)
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) s[t][k] = _mm512_setzero_ps();
  for (int64_t i = 0; i < D; i += 16) {
    __m512 qv[Q];
#pragma GCC unroll 3
    for (int t = 0; t < Q; ++t) qv[t] = _mm512_loadu_ps(q[t] + i);
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {
      const __m512 kv = _mm512_loadu_ps(keys + k * stride + i);
#pragma GCC unroll 3
      for (int t = 0; t < Q; ++t) s[t][k] = _mm512_fmadd_ps(qv[t], kv, s[t][k]);
    }
  }
#pragma GCC unroll 3
  for (int t = 0; t < Q; ++t) {
    __m256 v[8];
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k)
      v[k] = _mm256_add_ps(_mm512_castps512_ps256(s[t][k]),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s[t][k]), 1)));
    _mm256_storeu_ps(p[t], _mm256_mul_ps(hsum8(v), _mm256_set1_ps(scale)));
  }
}

// accumulate_block<2 H> of Q queries at once: each value's H registers of 16 loaded once for all
template <int Q, int H>
FASTDLLM_AVX512 void accumulate_avx512(const float* const* p, int64_t j0, int64_t j1, const float* values,
                                       int64_t stride, int64_t d0, float* const* acc) {
  __m512 a[Q][H];
#pragma GCC unroll 3
  for (int t = 0; t < Q; ++t)
#pragma GCC unroll 4
    for (int c = 0; c < H; ++c) a[t][c] = _mm512_loadu_ps(acc[t] + d0 + 16 * c);
  for (int64_t j = j0; j < j1; ++j) {
    __m512 v[H];
#pragma GCC unroll 4
    for (int c = 0; c < H; ++c) v[c] = _mm512_loadu_ps(values + j * stride + d0 + 16 * c);
#pragma GCC unroll 3
    for (int t = 0; t < Q; ++t) {
      const __m512 w = _mm512_set1_ps(p[t][j]);
#pragma GCC unroll 4
      for (int c = 0; c < H; ++c) a[t][c] = _mm512_fmadd_ps(w, v[c], a[t][c]);
    }
  }
#pragma GCC unroll 3
  for (int t = 0; t < Q; ++t)
#pragma GCC unroll 4
    for (int c = 0; c < H; ++c) _mm512_storeu_ps(acc[t] + d0 + 16 * c, a[t][c]);
}

// every 16-output block of D for Q queries (D a multiple of 16)
template <int Q>
FASTDLLM_AVX512 void accumulate_values_avx512(const float* const* p, int64_t j0, int64_t j1, const float* values,
                                              int64_t stride, int64_t D, float* const* acc) {
  int64_t d0 = 0;
  for (; d0 + 64 <= D; d0 += 64) accumulate_avx512<Q, 4>(p, j0, j1, values, stride, d0, acc);
  for (; d0 + 32 <= D; d0 += 32) accumulate_avx512<Q, 2>(p, j0, j1, values, stride, d0, acc);
  for (; d0 < D; d0 += 16) accumulate_avx512<Q, 1>(p, j0, j1, values, stride, d0, acc);
}

const bool kAvx512 = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") != 0;
}();

// The largest of p[0, n) (vector maxima: the same value in any order)
inline float maximum(const float* p, int64_t n) {
  __m256 mx = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(p + j));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, mx);
  float top = lanes[0];
  for (int k = 1; k < 8; ++k) top = std::max(top, lanes[k]);
  for (; j < n; ++j) top = std::max(top, p[j]);
  return top;
}

// exp(x) for x <= 0 (softmax scores minus their maximum), 8 at a time: Cephes' expf scheme,
// x = n ln 2 + r with |r| <= ln 2 / 2, a degree-7 polynomial for e^r, then 2^n into the exponent.
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));  // e^-87 ~ 1e-38: nothing beside the maximum's 1; 2^n stays normal
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// p[j] = exp(p[j] - top) for j < n; returns their sum
inline float exp_shifted(float* p, int64_t n, float top) {
  const __m256 t = _mm256_set1_ps(top);
  __m256 sum = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(p + j), t));
    _mm256_storeu_ps(p + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  for (; j < n; ++j) {
    p[j] = std::exp(p[j] - top);
    total += p[j];
  }
  return total;
}

// out[d0, d0 + 8 C) = inv * sum_j p[j] * v_j[d0, ...): C registers of outputs (constant indices)
template <int C>
inline void weighted_block(const float* p, int64_t n, const float* values, int64_t stride, int64_t d0, float inv,
                           float* out) {
  __m256 acc[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const __m256 w = _mm256_set1_ps(p[j]);
    const float* v = values + j * stride + d0;
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[c] = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8 * c), acc[c]);
  }
  const __m256 s = _mm256_set1_ps(inv);
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) _mm256_storeu_ps(out + d0 + 8 * c, _mm256_mul_ps(acc[c], s));
}

// acc[d0, d0 + 8 C) += p[j] * v_j[d0, ...) for j0 <= j < j1, one FMA per key in key order: a
// span of keys split into blocks gives weighted_block's bits (acc starting at zero).
template <int C>
inline void accumulate_block(const float* p, int64_t j0, int64_t j1, const float* values, int64_t stride, int64_t d0,
                             float* acc) {
  __m256 a[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) a[c] = _mm256_loadu_ps(acc + d0 + 8 * c);
  for (int64_t j = j0; j < j1; ++j) {
    const __m256 w = _mm256_set1_ps(p[j]);
    const float* v = values + j * stride + d0;
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) a[c] = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8 * c), a[c]);
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) _mm256_storeu_ps(acc + d0 + 8 * c, a[c]);
}

// a[i] = silu(g[i]) * u[i] for the gate g = gu[0, n) and the up projection u = gu[n, 2n), with
// sigmoid(x) from e = exp(-|x|) (never overflows): 1 / (1 + e) for x >= 0, e / (1 + e) below
inline void silu_gate(const float* gu, int64_t n, float* a) {
  const float* u = gu + n;
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gu + i);
    const __m256 e = exp_nonpositive(_mm256_or_ps(g, sign));  // exp(-|g|)
    const __m256 sig = _mm256_div_ps(_mm256_blendv_ps(one, e, g), _mm256_add_ps(one, e));  // blend on g's sign bit
    _mm256_storeu_ps(a + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(u + i)));
  }
  for (; i < n; ++i) a[i] = (gu[i] / (1.0f + std::exp(-gu[i]))) * u[i];
}

// out[0, D) = inv * sum_j p[j] * v_j, v_j = values + j * stride: 64, then 32, then 8 outputs at a time
inline void weighted_values(const float* p, int64_t n, const float* values, int64_t stride, int64_t D, float inv,
                            float* out) {
  int64_t d0 = 0;
  for (; d0 + 64 <= D; d0 += 64) weighted_block<8>(p, n, values, stride, d0, inv, out);
  for (; d0 + 32 <= D; d0 += 32) weighted_block<4>(p, n, values, stride, d0, inv, out);
  for (; d0 + 8 <= D; d0 += 8) weighted_block<1>(p, n, values, stride, d0, inv, out);
  if (d0 < D) {  // a head size that is not a multiple of 8
    std::fill(out + d0, out + D, 0.0f);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t d = d0; d < D; ++d) out[d] += p[j] * values[j * stride + d];
    for (int64_t d = d0; d < D; ++d) out[d] *= inv;
  }
}

struct Proj {  // one quantised linear layer
  // int8: weights packed by pack_int8 and float32 scales [N]; int8 with int8 activations (a8):
  // packed by pack_int8_a8 (uint8) and scales [N]; int4: codes packed by pack_int4 (uint8) and
  // float32 (scale, offset) pairs [N, K / 32, 2]. Bias float32 [N] or undefined.
  torch::Tensor q, s, b;
  int64_t n = 0, k = 0;
  bool int4 = false, a8 = false;
  void run(const float* x, int64_t M, float* y) const {
    const float* bias = b.defined() ? b.data_ptr<float>() : nullptr;
    if (a8)
      int8a8_gemm(x, M, k, q.data_ptr<uint8_t>(), s.data_ptr<float>(), bias, n, y);
    else if (int4)
      int4_gemm(x, M, k, q.data_ptr<uint8_t>(), s.data_ptr<float>(), bias, n, y);
    else
      int8_gemm(x, M, k, q.data_ptr<int8_t>(), s.data_ptr<float>(), bias, n, y);
  }
};

Proj make_proj(const torch::Tensor& q, const torch::Tensor& s, const torch::Tensor& b, int64_t k, const char* what) {
  TORCH_CHECK(q.device().is_cpu() && q.is_contiguous() && s.scalar_type() == torch::kFloat32 && s.is_contiguous(),
              what, ": contiguous weights and float32 scales on the CPU");
  // uint8 weights are int4 codes with (scale, offset) pairs, or int8 + 128 (W8A8) with one scale per row
  const bool a8 = q.scalar_type() == torch::kUInt8 && s.dim() == 1;
  const bool int4 = q.scalar_type() == torch::kUInt8 && !a8;
  const int64_t n = int4 ? s.size(0) : s.numel();
  if (a8) {
    TORCH_CHECK(q.numel() == int8a8_packed_size(n, k), what, ": int8 weights [", n, ", ", k,
                "] packed by pack_int8_a8 with scales [N]");
  } else if (int4) {
    TORCH_CHECK(s.dim() == 3 && k % 32 == 0 && s.size(1) == k / 32 && q.numel() == int4_packed_size(n, k), what,
                ": int4 codes [", n, ", ", k, "] packed by pack_int4 with (scale, offset) pairs [N, K / 32, 2]");
  } else {
    TORCH_CHECK(q.scalar_type() == torch::kInt8 && s.dim() == 1 && q.numel() == int8_packed_size(n, k), what,
                ": int8 weights [", n, ", ", k, "] packed by pack_int8 with scales [N]");
  }
  Proj p{q, s, torch::Tensor(), n, k, int4, a8};
  if (b.numel() > 0) {
    TORCH_CHECK(b.scalar_type() == torch::kFloat32 && b.numel() == n, what, ": float32 bias [N]");
    p.b = b.contiguous();
  }
  return p;
}

struct Layer {
  torch::Tensor ln1, ln2;  // float32 [H]
  Proj qkv, o, gate_up, down;
};

// out = w * (x * (1 / sqrt(mean(x^2) + eps))), row by row, as model.RMSNorm (the mean summed in double)
void rms_norm(const float* x, const float* w, float eps, int64_t M, int64_t H, float* out) {
  for (int64_t m = 0; m < M; ++m) {
    const float* r = x + m * H;
    double ss = 0.0;
    for (int64_t i = 0; i < H; ++i) ss += static_cast<double>(r[i]) * r[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / H) + eps);
    for (int64_t i = 0; i < H; ++i) out[m * H + i] = w[i] * (r[i] * inv);
  }
}

// x * cos + rotate_half(x) * sin for one head of D values, in place
inline void rope(float* x, const float* cos, const float* sin, int64_t D, float* tmp) {
  const int64_t h = D / 2;
  for (int64_t d = 0; d < D; ++d) tmp[d] = x[d];
  for (int64_t d = 0; d < h; ++d) x[d] = tmp[d] * cos[d] + (-tmp[d + h]) * sin[d];
  for (int64_t d = h; d < D; ++d) x[d] = tmp[d] * cos[d] + tmp[d - h] * sin[d];
}

class QuantStack {
 public:
  QuantStack(const std::vector<torch::Tensor>& w, const torch::Tensor& final_norm, const torch::Tensor& inv_freq,
             const torch::Tensor& cos_table, const torch::Tensor& sin_table, int64_t n_q, int64_t n_kv,
             int64_t head_dim, double eps, double scale)
      : n_q_(n_q), n_kv_(n_kv), d_(head_dim), eps_(static_cast<float>(eps)), scale_(static_cast<float>(scale)) {
    TORCH_CHECK(!w.empty() && w.size() % kPerLayer == 0, "QuantStack: ", kPerLayer, " tensors per layer");
    TORCH_CHECK(n_q > 0 && n_kv > 0 && n_q % n_kv == 0 && head_dim % 2 == 0, "QuantStack: bad head layout");
    hidden_ = w[0].numel();
    norm_ = final_norm.to(torch::kFloat32).contiguous();
    inv_freq_ = inv_freq.to(torch::kFloat32).contiguous();
    cos_ = cos_table.to(torch::kFloat32).contiguous();
    sin_ = sin_table.to(torch::kFloat32).contiguous();
    TORCH_CHECK(norm_.numel() == hidden_ && inv_freq_.numel() == head_dim / 2,
                "QuantStack: final norm [hidden] and inverse frequencies [head_dim / 2]");
    TORCH_CHECK(cos_.dim() == 2 && cos_.size(1) == head_dim && sin_.sizes() == cos_.sizes(),
                "QuantStack: cos and sin tables [positions, head_dim]");
    for (size_t i = 0; i < w.size(); i += kPerLayer) {
      Layer l;
      l.ln1 = w[i].to(torch::kFloat32).contiguous();
      l.qkv = make_proj(w[i + 1], w[i + 2], w[i + 3], hidden_, "qkv_proj");
      l.o = make_proj(w[i + 4], w[i + 5], w[i + 6], n_q * head_dim, "o_proj");
      l.ln2 = w[i + 7].to(torch::kFloat32).contiguous();
      l.gate_up = make_proj(w[i + 8], w[i + 9], w[i + 10], hidden_, "gate_up_proj");
      TORCH_CHECK(l.gate_up.n % 2 == 0, "gate_up_proj: an even number of outputs");
      l.down = make_proj(w[i + 11], w[i + 12], w[i + 13], l.gate_up.n / 2, "down_proj");
      TORCH_CHECK(l.ln1.numel() == hidden_ && l.ln2.numel() == hidden_ && l.o.n == hidden_ &&
                  l.down.n == hidden_ && l.qkv.n == (n_q + 2 * n_kv) * head_dim &&
                  (layers_.empty() || l.down.k == layers_[0].down.k),  // buffers are sized by the first layer
                  "QuantStack: layer shapes disagree");
      layers_.push_back(std::move(l));
    }
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // x [M, H] float32: the embedded rows of a forward; positions int64, M of them: each row's
  // position in its sequence; kv: the KV cache's buffer [layers, slots, S, 2, Hkv, D]; rows int64
  // [M, 3]: per query row, the cache row (slot * S + position) its keys and values are written
  // to, the cache row of its sequence's position 0, and how many positions from there it attends
  // to. Returns the final norm of the last layer's output [M, H].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& positions, torch::Tensor kv,
                        const torch::Tensor& rows) const {
    const int64_t M = x.size(0), H = hidden_, D = d_, L = num_layers();
    TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.size(1) == H,
                "x: float32 [M, ", H, "] on the CPU");
    TORCH_CHECK(positions.scalar_type() == torch::kLong && positions.numel() == M, "positions: int64, ", M, " of them");
    TORCH_CHECK(kv.scalar_type() == torch::kFloat32 && kv.is_contiguous() && kv.dim() == 6 && kv.size(0) == L &&
                kv.size(3) == 2 && kv.size(4) == n_kv_ && kv.size(5) == D,
                "kv: contiguous float32 [", L, ", slots, S, 2, ", n_kv_, ", ", D, "]");
    TORCH_CHECK(rows.scalar_type() == torch::kLong && rows.dim() == 2 && rows.size(0) == M && rows.size(1) == 3,
                "rows: int64 [M, 3]");
    const int64_t pool = kv.size(1) * kv.size(2);  // cache rows per layer
    const int64_t row_len = 2 * n_kv_ * D;          // floats per cache row
    auto rc = rows.contiguous();
    const int64_t* R = rc.data_ptr<int64_t>();
    int64_t longest = 0;
    for (int64_t m = 0; m < M; ++m) {
      TORCH_CHECK(R[3 * m] >= 0 && R[3 * m] < pool && R[3 * m + 1] >= 0 && R[3 * m + 2] >= 1 &&
                  R[3 * m + 1] + R[3 * m + 2] <= pool, "rows: a cache row out of range at query row ", m);
      longest = std::max(longest, R[3 * m + 2]);
    }
    // each row's cos and sin: the table's row for its position; past the table, computed as
    // model.RotaryEmbedding does (float32 position times inverse frequency, the half repeated)
    std::vector<float> cs(M * D), sn(M * D);
    {
      auto pc = positions.contiguous();
      const int64_t* P = pc.data_ptr<int64_t>();
      const float* F = inv_freq_.data_ptr<float>();
      const int64_t known = cos_.size(0);
      for (int64_t m = 0; m < M; ++m) {
        TORCH_CHECK(P[m] >= 0, "positions: negative at row ", m);
        if (P[m] < known) {
          std::copy_n(cos_.data_ptr<float>() + P[m] * D, D, cs.data() + m * D);
          std::copy_n(sin_.data_ptr<float>() + P[m] * D, D, sn.data() + m * D);
          continue;
        }
        for (int64_t j = 0; j < D / 2; ++j) {
          const float a = static_cast<float>(P[m]) * F[j];
          cs[m * D + j] = cs[m * D + j + D / 2] = std::cos(a);
          sn[m * D + j] = sn[m * D + j + D / 2] = std::sin(a);
        }
      }
    }
    const float* C = cs.data();
    const float* S = sn.data();

    auto out = x.contiguous().clone();
    float* X = out.data_ptr<float>();
    const int64_t width = (n_q_ + 2 * n_kv_) * D;
    const int64_t inter = layers_[0].down.k;
    std::vector<float> h(M * H), qkv(M * width), att(M * n_q_ * D), gu(M * 2 * inter), act(M * inter), tmp(M * H);
    std::vector<float> rot(D);

    for (int64_t l = 0; l < L; ++l) {
      const Layer& ly = layers_[l];
      float* cache = kv.data_ptr<float>() + l * pool * row_len;
      rms_norm(X, ly.ln1.data_ptr<float>(), eps_, M, H, h.data());
      ly.qkv.run(h.data(), M, qkv.data());
      for (int64_t m = 0; m < M; ++m) {
        float* r = qkv.data() + m * width;
        for (int64_t head = 0; head < n_q_ + n_kv_; ++head) rope(r + head * D, C + m * D, S + m * D, D, rot.data());
        float* dst = cache + R[3 * m] * row_len;  // [2, Hkv, D]: keys, then values
        std::copy(r + n_q_ * D, r + width, dst);
      }
      attend(qkv.data(), cache, R, M, longest, att.data());
      ly.o.run(att.data(), M, tmp.data());
      for (int64_t i = 0; i < M * H; ++i) X[i] = X[i] + tmp[i];

      rms_norm(X, ly.ln2.data_ptr<float>(), eps_, M, H, h.data());
      ly.gate_up.run(h.data(), M, gu.data());
      for (int64_t m = 0; m < M; ++m) silu_gate(gu.data() + m * 2 * inter, inter, act.data() + m * inter);
      ly.down.run(act.data(), M, tmp.data());
      for (int64_t i = 0; i < M * H; ++i) X[i] = X[i] + tmp[i];
    }
    rms_norm(X, norm_.data_ptr<float>(), eps_, M, H, X);  // row by row, each read before it is written
    return out;
  }

  // ``steps`` greedy AR forwards of N sequences, one query row each, each step fed the tokens the
  // last one picked: ids int64 [N], positions int64 [N] and rows int64 [N, 3] (as in forward) of
  // the first step, every later step one position on; embed float32 [V, H] (the embedding);
  // head_* the vocabulary projection (as the constructor's projections); each step's token is the
  // first maximum of its logits over every column but ``excluded`` (a NaN counts as the maximum),
  // as the engine's greedy pick. Returns the tokens int64 [steps, N].
  torch::Tensor greedy_run(const torch::Tensor& ids, const torch::Tensor& positions, torch::Tensor kv,
                           const torch::Tensor& rows, int64_t steps, const torch::Tensor& embed,
                           const torch::Tensor& head_q, const torch::Tensor& head_s, const torch::Tensor& head_b,
                           int64_t excluded) const {
    const int64_t N = ids.numel(), H = hidden_;
    TORCH_CHECK(steps >= 1 && N >= 1, "greedy_run: at least one step and one sequence");
    TORCH_CHECK(ids.scalar_type() == torch::kLong && positions.scalar_type() == torch::kLong &&
                positions.numel() == N && rows.scalar_type() == torch::kLong && rows.dim() == 2 &&
                rows.size(0) == N && rows.size(1) == 3, "greedy_run: ids and positions int64 [N], rows int64 [N, 3]");
    TORCH_CHECK(embed.device().is_cpu() && embed.scalar_type() == torch::kFloat32 && embed.dim() == 2 &&
                embed.size(1) == H && embed.is_contiguous(), "greedy_run: embedding float32 [V, ", H, "]");
    const Proj head = make_proj(head_q, head_s, head_b, H, "lm_head");
    const int64_t V = head.n, vocab_in = embed.size(0);
    auto tokens = torch::empty({steps, N}, torch::kLong);
    int64_t* T = tokens.data_ptr<int64_t>();
    auto x = torch::empty({N, H}, torch::kFloat32);
    auto pos = positions.contiguous().clone();
    auto r = rows.contiguous().clone();
    const auto first = ids.contiguous();
    std::vector<int64_t> cur(first.data_ptr<int64_t>(), first.data_ptr<int64_t>() + N);
    std::vector<float> logits(N * V);
    const float* E = embed.data_ptr<float>();
    for (int64_t step = 0; step < steps; ++step) {
      float* X = x.data_ptr<float>();
      for (int64_t m = 0; m < N; ++m) {
        TORCH_CHECK(cur[m] >= 0 && cur[m] < vocab_in, "greedy_run: token id ", cur[m], " outside the embedding");
        std::copy_n(E + cur[m] * H, H, X + m * H);
      }
      const torch::Tensor h = forward(x, pos, kv, r);
      head.run(h.data_ptr<float>(), N, logits.data());
      int64_t* P = pos.data_ptr<int64_t>();
      int64_t* Rw = r.data_ptr<int64_t>();
      for (int64_t m = 0; m < N; ++m) {
        const float* z = logits.data() + m * V;
        int64_t best = -1;
        float top = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < V; ++j) {
          if (j == excluded) continue;
          if (std::isnan(z[j])) {
            best = j;
            break;
          }
          if (best < 0 || z[j] > top) {
            best = j;
            top = z[j];
          }
        }
        T[step * N + m] = cur[m] = best;
        P[m] += 1;
        Rw[3 * m] += 1;
        Rw[3 * m + 2] += 1;
      }
    }
    return tokens;
  }

 private:
  // softmax(q k^T * scale) v for every (query row, head), each row over its own cache span
  // Attention of every query row over its span of the cache. Head sizes that are a multiple of 16
  // (all the models here): tasks of up to kTaskRows rows x one KV head, where the rows' query heads
  // of that KV head share each key and value while it is in L1 (attend_run); otherwise one task per
  // row and query head. Both give the same bits.
  void attend(const float* qkv, const float* cache, const int64_t* R, int64_t M, int64_t longest, float* out) const {
    const int64_t D = d_, width = (n_q_ + 2 * n_kv_) * D, row_len = 2 * n_kv_ * D, group = n_q_ / n_kv_;
    if (D % 16 == 0) {
      const int64_t chunks = (M + kTaskRows - 1) / kTaskRows;
      at::parallel_for(0, chunks * n_kv_, 1, [&](int64_t t0, int64_t t1) {
        std::vector<float> p(kTaskRows * group * (longest + 8)), acc(kTaskRows * group * D), inv(kTaskRows * group);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t h = t % n_kv_, r0 = (t / n_kv_) * kTaskRows, r1 = std::min(M, r0 + kTaskRows);
          for (int64_t a = r0; a < r1;) {  // runs of rows over the same cache start (one sequence)
            int64_t b = a + 1;
            while (b < r1 && R[3 * b + 1] == R[3 * a + 1]) ++b;
            attend_run(qkv, cache, R, a, b, h, longest + 8, p.data(), acc.data(), inv.data(), out);
            a = b;
          }
        }
      });
      return;
    }
    at::parallel_for(0, M * n_q_, 1, [&](int64_t t0, int64_t t1) {
      std::vector<float> p(longest + 8);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t m = t / n_q_, head = t % n_q_;
        const float* q = qkv + m * width + head * D;
        const float* keys = cache + R[3 * m + 1] * row_len + (head / group) * D;
        const int64_t n = R[3 * m + 2];
        float top = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < n; ++j) {
          p[j] = dot(q, keys + j * row_len, D) * scale_;
          top = std::max(top, p[j]);
        }
        const float total = exp_shifted(p.data(), n, top);
        weighted_values(p.data(), n, keys + n_kv_ * D, row_len, D, 1.0f / total, out + m * n_q_ * D + head * D);
      }
    });
  }

  static constexpr int64_t kTaskRows = 8;   // query rows per attention task
  static constexpr int64_t kValueKeys = 32;  // values per block that the task's queries take in turn
  static constexpr int kQueries = 3;          // queries whose sums share each load (AVX-512: 24 + 3 + 1 registers)

  // Rows [a, b) (one cache start) x the query heads of KV head h. Scores: 8 keys at a time for every
  // query (scores8), the rest of a query's span one key at a time (dot): the bits of dot for every
  // key. Values: kValueKeys at a time for every query, into acc in key order, then times 1 / total.
  // p: the queries' scores, pstride apart; acc [queries, D]; inv [queries].
  void attend_run(const float* qkv, const float* cache, const int64_t* R, int64_t a, int64_t b, int64_t h,
                  int64_t pstride, float* p, float* acc, float* inv, float* out) const {
    const int64_t D = d_, width = (n_q_ + 2 * n_kv_) * D, row_len = 2 * n_kv_ * D, group = n_q_ / n_kv_;
    const float* keys = cache + R[3 * a + 1] * row_len + h * D;
    const float* values = keys + n_kv_ * D;
    const int64_t nq = (b - a) * group;
    auto span = [&](int64_t i) { return R[3 * (a + i / group) + 2]; };
    auto query = [&](int64_t i) { return qkv + (a + i / group) * width + (h * group + i % group) * D; };
    int64_t longest = 0;
    for (int64_t m = a; m < b; ++m) longest = std::max(longest, R[3 * m + 2]);
    for (int64_t j = 0; j + 8 <= longest; j += 8)
      for (int64_t i = 0; i < nq;) {
        if (j + 8 > span(i)) {
          ++i;
          continue;
        }
        if (!kAvx512) {
          scores8(query(i), keys + j * row_len, row_len, D, scale_, p + i * pstride + j);
          ++i;
          continue;
        }
        int q = 1;  // up to 3 consecutive queries whose spans hold these 8 keys
        while (q < kQueries && i + q < nq && j + 8 <= span(i + q)) ++q;
        const float* qs[kQueries];
        float* ps[kQueries];
        for (int t = 0; t < q; ++t) {
          qs[t] = query(i + t);
          ps[t] = p + (i + t) * pstride + j;
        }
        const float* kj = keys + j * row_len;
        if (q == 3)
          scores8_avx512<3>(qs, kj, row_len, D, scale_, ps);
        else if (q == 2)
          scores8_avx512<2>(qs, kj, row_len, D, scale_, ps);
        else
          scores8_avx512<1>(qs, kj, row_len, D, scale_, ps);
        i += q;
      }
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t n = span(i);
      float* pi = p + i * pstride;
      for (int64_t j = n / 8 * 8; j < n; ++j) pi[j] = dot(query(i), keys + j * row_len, D) * scale_;
      inv[i] = 1.0f / exp_shifted(pi, n, maximum(pi, n));
    }
    std::fill(acc, acc + nq * D, 0.0f);
    for (int64_t j0 = 0; j0 < longest; j0 += kValueKeys) {
      if (kAvx512) {
        for (int64_t i = 0; i < nq; i += kQueries) {
          const int q = static_cast<int>(std::min<int64_t>(kQueries, nq - i));
          const float* ps[kQueries];
          float* as[kQueries];
          int64_t common = j0 + kValueKeys;  // keys every query of the group takes; then each its own rest
          for (int t = 0; t < q; ++t) {
            ps[t] = p + (i + t) * pstride;
            as[t] = acc + (i + t) * D;
            common = std::min(common, span(i + t));
          }
          if (common > j0 && q == 3)
            accumulate_values_avx512<3>(ps, j0, common, values, row_len, D, as);
          else if (common > j0 && q == 2)
            accumulate_values_avx512<2>(ps, j0, common, values, row_len, D, as);
          else if (common > j0)
            accumulate_values_avx512<1>(ps, j0, common, values, row_len, D, as);
          for (int t = 0; t < q; ++t) {
            const int64_t from = std::max(j0, common), to = std::min(j0 + kValueKeys, span(i + t));
            if (from < to) accumulate_values_avx512<1>(ps + t, from, to, values, row_len, D, as + t);
          }
        }
        continue;
      }
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t j1 = std::min(j0 + kValueKeys, span(i));
        if (j0 >= j1) continue;
        const float* pi = p + i * pstride;
        int64_t d0 = 0;
        for (; d0 + 64 <= D; d0 += 64) accumulate_block<8>(pi, j0, j1, values, row_len, d0, acc + i * D);
        for (; d0 + 32 <= D; d0 += 32) accumulate_block<4>(pi, j0, j1, values, row_len, d0, acc + i * D);
        for (; d0 < D; d0 += 16) accumulate_block<2>(pi, j0, j1, values, row_len, d0, acc + i * D);
      }
    }
    for (int64_t i = 0; i < nq; ++i) {
      float* o = out + (a + i / group) * n_q_ * D + (h * group + i % group) * D;
      const __m256 s = _mm256_set1_ps(inv[i]);
      for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(acc + i * D + d), s));
    }
  }

  int64_t n_q_, n_kv_, d_, hidden_ = 0;
  float eps_, scale_;
  torch::Tensor norm_, inv_freq_, cos_, sin_;  // float32 [H], [D / 2], [positions, D] twice
  std::vector<Layer> layers_;
};

}  // namespace

void bind_stack(pybind11::module& m) {
  pybind11::class_<QuantStack>(m, "QuantStack")
      .def(pybind11::init<const std::vector<torch::Tensor>&, const torch::Tensor&, const torch::Tensor&,
                          const torch::Tensor&, const torch::Tensor&, int64_t, int64_t, int64_t, double, double>())
      .def("num_layers", &QuantStack::num_layers)
      .def("forward", &QuantStack::forward, pybind11::call_guard<pybind11::gil_scoped_release>())
      .def("greedy_run", &QuantStack::greedy_run, pybind11::call_guard<pybind11::gil_scoped_release>());
}
