// W8A8 matrix product on AMX (Intel Advanced Matrix Extensions: TDPBSUD multiplies a tile of up
// to 16 rows x 64 signed bytes by a tile of 16 x 64 unsigned bytes into 16 x 16 int32 sums in
// one instruction). Compiled for AMX by the pragma below and called only where the CPU has it and
// the kernel (Linux) has granted the process the tile state (cpu_int8a8.cpp checks at run time).
//
// The weights need no repacking: pack_int8_a8's [Kp/4][16 outputs][4 inputs] groups are exactly
// the B operand's layout (a row of 64 bytes = 4 inputs of 16 outputs). One A tile is a chunk of
// rows x one block of 32 inputs; each block's int32 sums go through the same float epilogue as
// on the other paths (sum + XC, to float, times the block's scale, accumulated by FMA), so the
// result has the same bits. Rows are split into chunks of at most 16 of equal height (32 rows:
// 16 + 16; 20: 10 + 10); the activations are padded with zero rows to a whole number of chunks
// (amx_padded_rows), whose sums are never stored.

#include <immintrin.h>

#include <cstring>

#include "cpu_a8.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,fma,amx-tile,amx-int8")

namespace {

constexpr int kMaxChunk = 16;  // rows of one A tile
constexpr int kQuad = 4;       // output groups per pass: tiles 4-7 hold their sums

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// tmm0: activations (chunk x 32 bytes); tmm1: a group's weights for one block (8 x 64 bytes);
// tmm4..7: the quad's int32 sums (chunk x 16)
void configure(int chunk) {
  TileConfig c;
  c.rows[0] = chunk, c.colsb[0] = kA8Block;
  c.rows[1] = kA8Block / 4, c.colsb[1] = 64;
  for (int t = 4; t < 8; ++t) c.rows[t] = chunk, c.colsb[t] = kA8Outputs * 4;
  _tile_loadconfig(&c);
}

inline int64_t chunks_of(int64_t M) { return (M + kMaxChunk - 1) / kMaxChunk; }
inline int64_t chunk_of(int64_t M) { return (M + chunks_of(M) - 1) / chunks_of(M); }

// One block's sums of group V: A (tmm0) x the group's weights, into tile T (= 4 + V: the tile
// intrinsics take the register's number as a literal), stored to c[V].
#define A8_AMX_GROUP(V, T)                                                     \
  if (NV > V) {                                                                \
    _tile_zero(T);                                                             \
    _tile_loadd(1, w[V] + b * kA8Block * kA8Outputs, kA8Outputs * 4);          \
    _tile_dpbsud(T, 0, 1);                                                     \
    _tile_stored(T, c[V], kA8Outputs * 4);                                     \
  }

template <int NV>
void quad(const A8Args& a, int64_t g0, int64_t m0, int64_t mr) {
  const int64_t KB = a.KB, Kp = KB * kA8Block;
  const uint8_t* w[kQuad];
  for (int v = 0; v < NV; ++v) w[v] = a.w + (g0 + v) * KB * kA8Block * kA8Outputs;
  alignas(64) int32_t c[kQuad][kMaxChunk][kA8Outputs];
  alignas(64) float facc[kMaxChunk][kQuad][kA8Outputs];
  for (int64_t r = 0; r < mr; ++r)
    for (int v = 0; v < NV; ++v) _mm512_store_ps(facc[r][v], _mm512_setzero_ps());
  for (int64_t b = 0; b < KB; ++b) {
    _tile_loadd(0, a.xq + m0 * Kp + b * kA8Block, Kp);
    A8_AMX_GROUP(0, 4) A8_AMX_GROUP(1, 5) A8_AMX_GROUP(2, 6) A8_AMX_GROUP(3, 7)
    for (int64_t r = 0; r < mr; ++r) {
      const __m512i xc = _mm512_set1_epi32(a.xc[(m0 + r) * KB + b]);  // -128 * the block's activation sum
      const __m512 sc = _mm512_set1_ps(a.xs[(m0 + r) * KB + b]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const __m512i sum = _mm512_add_epi32(_mm512_load_si512(c[v][r]), xc);
        _mm512_store_ps(facc[r][v], _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), sc, _mm512_load_ps(facc[r][v])));
      }
    }
  }
  for (int v = 0; v < NV; ++v) {
    const int64_t n0 = (g0 + v) * kA8Outputs;
    const int64_t valid = a.N - n0 < kA8Outputs ? a.N - n0 : kA8Outputs;
    const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
    const __m512 ws = _mm512_maskz_loadu_ps(mask, a.ws + n0);
    const __m512 bias = a.bias ? _mm512_maskz_loadu_ps(mask, a.bias + n0) : _mm512_setzero_ps();
    for (int64_t r = 0; r < mr; ++r)
      _mm512_mask_storeu_ps(a.y + (m0 + r) * a.N + n0, mask, _mm512_fmadd_ps(_mm512_load_ps(facc[r][v]), ws, bias));
  }
}

#undef A8_AMX_GROUP

}  // namespace

int64_t amx_padded_rows(int64_t M) { return M == 0 ? 0 : chunks_of(M) * chunk_of(M); }

// Output groups [g0, g1) for every row; a.xq must hold amx_padded_rows(a.M) rows, the ones past a.M
// zero (xs and xc are read for real rows only). The tile configuration is per thread: set here,
// released at the end.
void int8a8_groups_amx(const A8Args& a, int64_t g0, int64_t g1) {
  const int64_t chunk = chunk_of(a.M);
  configure(static_cast<int>(chunk));
  for (int64_t g = g0; g < g1; g += kQuad) {
    const int64_t nv = g1 - g < kQuad ? g1 - g : kQuad;
    for (int64_t m0 = 0; m0 < a.M; m0 += chunk) {
      const int64_t mr = a.M - m0 < chunk ? a.M - m0 : chunk;
      switch (nv) {
        case 1: quad<1>(a, g, m0, mr); break;
        case 2: quad<2>(a, g, m0, mr); break;
        case 3: quad<3>(a, g, m0, mr); break;
        default: quad<4>(a, g, m0, mr); break;
      }
    }
  }
  _tile_release();
}

#pragma GCC pop_options
