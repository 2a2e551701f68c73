// int8 weights x dynamic int8 activations (W8A8) for x86 CPUs, chosen at run time by the CPU's
// instruction sets: AVX-512 VNNI (cpu_int8a8_vnni.cpp) where present, else AVX2 (here).
//
// Each row of activations is quantised per block of 32 inputs (scale = max |x| / 127, round to
// nearest even), as llama.cpp's Q8_0 does: one scale per row cost SmolLM2-135M 13x the KL of
// weight-only int8 against float32 (outlier channels), per block of 32 about 2x. The products
// are then integer sums, exact whatever the instruction set or the order, and every output gets
// the same float epilogue (per block: sum * scale accumulated by FMA; at the end: * weight
// scale + bias by FMA), so a row's result depends neither on the other rows nor on the path.
//
// AVX2 has no u8 x s8 -> s32 instruction: vpmaddubsw sums pairs of u8 x s8 products into
// saturating int16, and 255 * 127 * 2 would saturate. So it takes |x| (at most 127) times the
// weight with x's sign (at most 127 in magnitude): a pair sums to at most 32258, exact, then
// vpmaddwd by ones widens to int32. Weights are stored biased (q + 128, for VNNI's unsigned
// operand) and unbiased here with one xor per weight vector, shared by the tile's rows.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "cpu_a8.h"
#include "cpu_quant.h"

namespace {

// One group of 16 outputs x MR rows (MR <= 2: 16 ymm registers hold 2 x MR int32 and float
// accumulators, 2 weight vectors and the broadcasts).
template <int MR>
inline void tile_avx2(const A8Args& a, int64_t g, int64_t m0) {
  const int64_t KB = a.KB;
  const uint8_t* w = a.w + g * KB * kA8Block * kA8Outputs;
  const __m256i bias8 = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  __m256 facc[2][MR];
  for (int v = 0; v < 2; ++v)
    for (int r = 0; r < MR; ++r) facc[v][r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < KB; ++b) {
    __m256i iacc[2][MR];
    for (int v = 0; v < 2; ++v)
      for (int r = 0; r < MR; ++r) iacc[v][r] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int s = 0; s < 8; ++s) {
      const uint8_t* p = w + (b * 8 + s) * 64;  // [16 outputs][4 inputs]: outputs 0-7, then 8-15
      __m256i wv[2];
      wv[0] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), bias8);
      wv[1] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)), bias8);
#pragma GCC unroll 2
      for (int r = 0; r < MR; ++r) {
        int32_t four;
        std::memcpy(&four, a.xq + (m0 + r) * KB * kA8Block + b * kA8Block + s * 4, 4);
        const __m256i xv = _mm256_set1_epi32(four), ax = _mm256_abs_epi8(xv);
#pragma GCC unroll 2
        for (int v = 0; v < 2; ++v) {
          const __m256i pairs = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv[v], xv));
          iacc[v][r] = _mm256_add_epi32(iacc[v][r], _mm256_madd_epi16(pairs, ones));
        }
      }
    }
    for (int r = 0; r < MR; ++r) {
      const __m256 sc = _mm256_set1_ps(a.xs[(m0 + r) * KB + b]);
      for (int v = 0; v < 2; ++v) facc[v][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[v][r]), sc, facc[v][r]);
    }
  }
  for (int v = 0; v < 2; ++v) {
    const int64_t n0 = g * kA8Outputs + v * 8;
    if (n0 >= a.N) break;
    const int64_t valid = a.N - n0 < 8 ? a.N - n0 : 8;
    alignas(32) float ws[8] = {0}, bs[8] = {0}, out[8];
    std::memcpy(ws, a.ws + n0, valid * sizeof(float));
    if (a.bias) std::memcpy(bs, a.bias + n0, valid * sizeof(float));
    for (int r = 0; r < MR; ++r) {
      _mm256_store_ps(out, _mm256_fmadd_ps(facc[v][r], _mm256_load_ps(ws), _mm256_load_ps(bs)));
      std::memcpy(a.y + (m0 + r) * a.N + n0, out, valid * sizeof(float));
    }
  }
}

// Row r of X [M, K] -> int8 blocks of 32 (zero-padded), their scales and -128 x their sums.
void quantise_rows(const float* X, int64_t M, int64_t K, int64_t KB, int8_t* q, float* s, int32_t* c) {
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    alignas(32) float buf[kA8Block];
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t b = 0; b < KB; ++b) {
        const int64_t k0 = b * kA8Block, n = K - k0 < kA8Block ? K - k0 : kA8Block;
        std::memset(buf, 0, sizeof(buf));
        std::memcpy(buf, X + m * K + k0, n * sizeof(float));
        const __m256 sign = _mm256_set1_ps(-0.0f);
        __m256 mx = _mm256_setzero_ps();
        for (int i = 0; i < kA8Block; i += 8) mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_load_ps(buf + i)));
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, mx);
        float amax = 0.0f;
        for (float l : lanes) amax = l > amax ? l : amax;
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        s[m * KB + b] = amax / 127.0f;
        int32_t sum = 0;
        for (int i = 0; i < kA8Block; i += 8) {  // round to nearest even (the default rounding mode)
          alignas(32) int32_t qi[8];
          _mm256_store_si256(reinterpret_cast<__m256i*>(qi),
                             _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(buf + i), _mm256_set1_ps(inv))));
          for (int j = 0; j < 8; ++j) {
            const int32_t v = qi[j] > 127 ? 127 : qi[j] < -127 ? -127 : qi[j];
            q[m * KB * kA8Block + k0 + i + j] = static_cast<int8_t>(v);
            sum += v;
          }
        }
        c[m * KB + b] = -128 * sum;
      }
  });
}

}  // namespace

void int8a8_groups_avx2(const A8Args& a, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; ++g) {
    int64_t m = 0;
    for (; m + 2 <= a.M; m += 2) tile_avx2<2>(a, g, m);
    if (m < a.M) tile_avx2<1>(a, g, m);
  }
}

int int8a8_best_isa() {
  static const int isa = [] {
    __builtin_cpu_init();
    const bool vnni512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    return vnni512 ? kIsaVnni512 : kIsaAvx2;
  }();
  return isa;
}

const char* isa_name(int isa) { return isa == kIsaVnni512 ? "avx512-vnni" : "avx2"; }

void int8a8_gemm(const float* X, int64_t M, int64_t K, const uint8_t* W, const float* S, const float* B, int64_t N,
                 float* Y, int isa) {
  if (M == 0) return;
  if (isa == kIsaAuto) isa = int8a8_best_isa();
  const int64_t KB = (K + kA8Block - 1) / kA8Block;
  std::vector<int8_t> q(M * KB * kA8Block);
  std::vector<float> s(M * KB);
  std::vector<int32_t> c(M * KB);
  quantise_rows(X, M, K, KB, q.data(), s.data(), c.data());
  const A8Args a{q.data(), s.data(), c.data(), M, KB, W, S, B, N, Y};
  const int64_t groups = (N + kA8Outputs - 1) / kA8Outputs;
  auto* fn = isa == kIsaVnni512 ? &int8a8_groups_vnni512 : &int8a8_groups_avx2;
  // quads of groups per task (the VNNI tiles' widths: 4 for one or two rows, else 2); a group's
  // weights are read once for all rows
  at::parallel_for(0, (groups + 3) / 4, 1, [&](int64_t p0, int64_t p1) {
    fn(a, 4 * p0, std::min(4 * p1, groups));
  });
}

int64_t int8a8_packed_size(int64_t N, int64_t K) {
  return (N + kA8Outputs - 1) / kA8Outputs * kA8Outputs * ((K + kA8Block - 1) / kA8Block * kA8Block);
}

torch::Tensor int8a8_linear(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scale,
                            const c10::optional<torch::Tensor>& bias, int64_t isa) {
  check_input(x);
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32 && scale.dim() == 1, "scale: float32 [N]");
  const int64_t M = x.size(0), K = x.size(1), N = scale.numel();
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.is_contiguous() &&
              packed.numel() == int8a8_packed_size(N, K), "packed: int8 weights [", N, ", ", K,
              "] as pack_int8_a8 lays them out");
  TORCH_CHECK(isa == kIsaAuto || isa == kIsaAvx2 || (isa == kIsaVnni512 && int8a8_best_isa() == kIsaVnni512),
              "int8a8_linear: instruction set ", isa, " is not available on this CPU");
  auto xc = x.contiguous();
  auto sc = scale.contiguous();
  auto y = torch::empty({M, N}, xc.options());
  torch::Tensor bc;
  const float* B = bias_data(bias, N, bc);
  int8a8_gemm(xc.data_ptr<float>(), M, K, packed.data_ptr<uint8_t>(), sc.data_ptr<float>(), B, N,
              y.data_ptr<float>(), static_cast<int>(isa));
  return y;
}
