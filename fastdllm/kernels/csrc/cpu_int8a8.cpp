// int8 weights x dynamic int8 activations (W8A8) for x86 CPUs, chosen at run time by the CPU's
// instruction sets: AMX tiles (cpu_int8a8_amx.cpp) for several rows where the CPU has them,
// AVX-512 VNNI (cpu_int8a8_vnni.cpp) where present, else AVX2 (here).
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

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

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

// Row r of X [M, K] -> int8 blocks of 32 (zero-padded), their scales and -128 x their sums. Eight
// inputs at a time: |x| by clearing the sign, the block's maximum, x * (127 / max) rounded to
// nearest even by cvtps (the default rounding mode), clamped, summed and packed to bytes.
void quantise_rows(const float* X, int64_t M, int64_t K, int64_t KB, int8_t* q, float* s, int32_t* c) {
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    alignas(32) float buf[kA8Block];
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the packs' lane interleave
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t b = 0; b < KB; ++b) {
        const int64_t k0 = b * kA8Block, n = K - k0 < kA8Block ? K - k0 : kA8Block;
        const float* x = X + m * K + k0;
        if (n < kA8Block) {  // the row's last, partial block
          std::memset(buf, 0, sizeof(buf));
          std::memcpy(buf, x, n * sizeof(float));
          x = buf;
        }
        __m256 v[4];
        for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + 8 * i);
        const __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                        _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        s[m * KB + b] = amax / 127.0f;
        __m256i qi[4], sum = _mm256_setzero_si256();
        for (int i = 0; i < 4; ++i) {
          qi[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], _mm256_set1_ps(inv)));
          qi[i] = _mm256_min_epi32(hi, _mm256_max_epi32(lo, qi[i]));
          sum = _mm256_add_epi32(sum, qi[i]);
        }
        const __m256i bytes = _mm256_permutevar8x32_epi32(
            _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3])), order);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + m * KB * kA8Block + k0), bytes);
        alignas(32) int32_t lanes[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sum);
        int32_t total = 0;
        for (int32_t l : lanes) total += l;
        c[m * KB + b] = -128 * total;
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

namespace {

bool has_vnni512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

// AMX-TILE and AMX-INT8 (CPUID leaf 7: EDX bits 24, 25), and Linux's permission to use the tile
// state, which a process must ask for once (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA).
bool has_amx() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!has_vnni512() || !__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1) || !((d >> 25) & 1))
    return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

// Below this many rows the VNNI kernel, which streams the weights with 4-8 independent chains,
// is as fast (its one- and two-row tiles are bound by the weights' read).
constexpr int64_t kAmxMinRows = 4;

}  // namespace

bool int8a8_has_isa(int isa) {
  static const bool vnni512 = has_vnni512(), amx = has_amx();
  return isa == kIsaAvx2 || (isa == kIsaVnni512 && vnni512) || (isa == kIsaAmx && amx);
}

int int8a8_best_isa() {
  return int8a8_has_isa(kIsaAmx) ? kIsaAmx : int8a8_has_isa(kIsaVnni512) ? kIsaVnni512 : kIsaAvx2;
}

const char* isa_name(int isa) { return isa == kIsaAmx ? "amx" : isa == kIsaVnni512 ? "avx512-vnni" : "avx2"; }

void int8a8_gemm(const float* X, int64_t M, int64_t K, const uint8_t* W, const float* S, const float* B, int64_t N,
                 float* Y, int isa) {
  if (M == 0) return;
  if (isa == kIsaAuto) {
    isa = int8a8_best_isa();
    if (isa == kIsaAmx && M < kAmxMinRows) isa = kIsaVnni512;  // has_amx implies VNNI
  }
  const int64_t KB = (K + kA8Block - 1) / kA8Block;
  const int64_t Mp = isa == kIsaAmx ? amx_padded_rows(M) : M;  // AMX tiles read whole chunks of rows
  std::vector<int8_t> q(Mp * KB * kA8Block);  // zeros past row M
  std::vector<float> s(M * KB);
  std::vector<int32_t> c(M * KB);
  quantise_rows(X, M, K, KB, q.data(), s.data(), c.data());
  const A8Args a{q.data(), s.data(), c.data(), M, KB, W, S, B, N, Y};
  const int64_t groups = (N + kA8Outputs - 1) / kA8Outputs;
  auto* fn = isa == kIsaAmx ? &int8a8_groups_amx : isa == kIsaVnni512 ? &int8a8_groups_vnni512 : &int8a8_groups_avx2;
  // the groups split evenly between the threads, at least 4 per task (the VNNI tiles' widths: 4 for
  // one or two rows, else 2; AMX: 4 sums tiles); a group's weights are read once for all rows
  at::parallel_for(0, groups, 4, [&](int64_t g0, int64_t g1) { fn(a, g0, g1); });
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
  TORCH_CHECK(isa == kIsaAuto || int8a8_has_isa(static_cast<int>(isa)),
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
