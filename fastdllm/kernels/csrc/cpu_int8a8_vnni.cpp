// W8A8 matrix product on AVX-512 VNNI (vpdpbusd: 64 byte products summed into 16 int32 lanes per
// instruction). Compiled for AVX-512 by the pragma below and called only where the CPU has it
// (cpu_int8a8.cpp checks at run time); no torch headers here (see cpu_a8.h).
//
// Lanes are outputs: a 64-byte weight vector holds 4 consecutive inputs of 16 outputs, and the
// 4 activation bytes of a row are broadcast to every lane, so there are no horizontal sums. A
// tile is NV groups of 16 outputs x MR rows; its weights are loaded once per k-step for all MR
// rows, and a group of output rows' weights (16 x K bytes) stays in L1/L2 across row tiles.

#include <immintrin.h>

#include <cstring>

#include "cpu_a8.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,fma")

namespace {

template <int NV, int MR>
inline void tile(const A8Args& a, int64_t g0, int64_t m0) {
  const int64_t KB = a.KB;
  const uint8_t* w[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) w[v] = a.w + (g0 + v) * KB * kA8Block * kA8Outputs;
  __m512 facc[NV][MR];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v)
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) facc[v][r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < KB; ++b) {
    __m512i iacc[NV][MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512i c = _mm512_set1_epi32(a.xc[(m0 + r) * KB + b]);  // -128 * the block's activation sum
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) iacc[v][r] = c;
    }
#pragma GCC unroll 8
    for (int s = 0; s < 8; ++s) {  // 8 steps of 4 inputs
      __m512i wv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_si512(w[v] + (b * 8 + s) * 64);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        int32_t four;
        std::memcpy(&four, a.xq + (m0 + r) * KB * kA8Block + b * kA8Block + s * 4, 4);
        const __m512i xv = _mm512_set1_epi32(four);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) iacc[v][r] = _mm512_dpbusd_epi32(iacc[v][r], wv[v], xv);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 sc = _mm512_set1_ps(a.xs[(m0 + r) * KB + b]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) facc[v][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[v][r]), sc, facc[v][r]);
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const int64_t n0 = (g0 + v) * kA8Outputs;
    const int64_t valid = a.N - n0 < kA8Outputs ? a.N - n0 : kA8Outputs;
    const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
    const __m512 ws = _mm512_maskz_loadu_ps(mask, a.ws + n0);
    const __m512 bias = a.bias ? _mm512_maskz_loadu_ps(mask, a.bias + n0) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) _mm512_mask_storeu_ps(a.y + (m0 + r) * a.N + n0, mask, _mm512_fmadd_ps(facc[v][r], ws, bias));
  }
}

constexpr int kMaxRows = 6;  // 2 x 6 tiles: 12 int32 + 12 float accumulators + 2 weight vectors of 32 registers

// row tiles as even as possible (8 rows: 4 + 4, 32 rows: 6 + 6 + 5 + 5 + 5 + 5)
template <int NV>
inline void rows(const A8Args& a, int64_t g) {
  const int64_t tiles = (a.M + kMaxRows - 1) / kMaxRows;
  int64_t m = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t mr = a.M / tiles + (t < a.M % tiles ? 1 : 0);
    switch (mr) {
      case 1: tile<NV, 1>(a, g, m); break;
      case 2: tile<NV, 2>(a, g, m); break;
      case 3: tile<NV, 3>(a, g, m); break;
      case 4: tile<NV, 4>(a, g, m); break;
      case 5: tile<NV, 5>(a, g, m); break;
      default: tile<NV, 6>(a, g, m); break;
    }
    m += mr;
  }
}

}  // namespace

void int8a8_groups_vnni512(const A8Args& a, int64_t g0, int64_t g1) {
  int64_t g = g0;
  // one or two rows (AR decoding): four groups at a time, so that 4-8 independent chains of
  // vpdpbusd (latency 5) keep the unit busy while the weights stream in
  if (a.M <= 2)
    for (; g + 4 <= g1; g += 4) a.M == 1 ? tile<4, 1>(a, g, 0) : tile<4, 2>(a, g, 0);
  for (; g + 2 <= g1; g += 2) rows<2>(a, g);
  if (g < g1) rows<1>(a, g);
}

#pragma GCC pop_options
