// The int8-activation (W8A8) kernels' shared arguments, without torch's headers: the AVX-512 VNNI
// kernel (cpu_int8a8_vnni.cpp) is compiled for an instruction set the rest of the module may not
// have, and any inline function it shared with the other sources could be linked in its place.
#pragma once

#include <cstdint>

// Y[m, n] = S[n] * sum_b XS[m, b] * sum_{k in block b} XQ[m, k] * (W[n, k] - 128) + (B ? B[n] : 0)
// over blocks b of 32 inputs. XQ int8 [M, KB * 32] (zero-padded), XS float [M, KB] (each block's
// scale), XC int32 [M, KB] = -128 * (sum of the block's XQ): the VNNI kernel multiplies unsigned
// weights (W = q + 128) by signed activations and starts each block's sum at XC to remove the 128.
// W: [ceil(N / 16)][KB * 8][16 outputs][4 inputs] bytes (pack_int8_a8 in native.py).
struct A8Args {
  const int8_t* xq;
  const float* xs;
  const int32_t* xc;
  int64_t M, KB;
  const uint8_t* w;
  const float* ws;
  const float* bias;
  int64_t N;
  float* y;
};

constexpr int64_t kA8Block = 32;     // inputs per activation scale
constexpr int64_t kA8Outputs = 16;   // outputs per packed group (one 512-bit vector of int32 sums)

// Output groups [g0, g1) (16 outputs each) for every row. Integer sums are exact and the float
// epilogue is the same sequence of operations in both, so the two give the same bits.
void int8a8_groups_avx2(const A8Args& a, int64_t g0, int64_t g1);
void int8a8_groups_vnni512(const A8Args& a, int64_t g0, int64_t g1);
// AMX: XQ must hold amx_padded_rows(M) rows (the rows past M zero): its tiles read
// whole chunks of rows.
void int8a8_groups_amx(const A8Args& a, int64_t g0, int64_t g1);
int64_t amx_padded_rows(int64_t M);
