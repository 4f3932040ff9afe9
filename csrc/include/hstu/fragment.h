// register fragments of mma.sync m16n8k16 and the ldmatrix addressing that fills them (PTX ISA, "matrix
// fragments for mma.m16n8k16"). with lane = 4 g + t (g = lane / 4, t = lane % 4):
//   A (16x16, row):  reg q holds (row g + 8 (q % 2), cols 2t, 2t+1 + 8 (q / 2))
//   B (16x8,  col):  reg q holds (rows 2t, 2t+1 + 8 q, col g)
//   C (16x8, fp32):  elem e is (row g + 8 (e / 2), col 2t + e % 2)
// so the C fragments of two adjacent 8-column tiles are, packed to 16 bits, the A fragment of one 16-column
// step: the scores of one GEMM feed the next without leaving registers.
#pragma once

#include "arch/arch.h"
#include "tile.h"

namespace hstu {

struct Lane {
  int lane, g, t;
  HSTU_HD explicit Lane(int l) : lane(l), g(l >> 2), t(l & 3) {}
  // row / column of C element e inside a 16 x 8 tile
  HSTU_HD int c_row(int e) const { return g + 8 * (e >> 1); }
  HSTU_HD int c_col(int e) const { return 2 * t + (e & 1); }
};

// A operand rows [m0, m0 + 16) x cols [k0, k0 + 16) of a row-major tile (rows = m)
template <int kCols>
HSTU_DEVICE HSTU_FORCEINLINE void load_a(uint32_t (&a)[4], const uint16_t* tile, int m0, int k0, int lane) {
  const int row = m0 + ((lane >> 3) & 1) * 8 + (lane & 7);
  const int col = k0 + (lane >> 4) * 8;
  arch::ldmatrix_x4(a, tile + SmemTile<kCols>::offset(row, col));
}

// B operands of two 8-column tiles n0 .. n0 + 15, k0 .. k0 + 15, from a tile stored [n][k]:
// b[0], b[1] for columns n0 .. n0 + 7, b[2], b[3] for n0 + 8 .. n0 + 15
template <int kCols>
HSTU_DEVICE HSTU_FORCEINLINE void load_b_nk(uint32_t (&b)[4], const uint16_t* tile, int n0, int k0, int lane) {
  const int row = n0 + (lane >> 4) * 8 + (lane & 7);
  const int col = k0 + ((lane >> 3) & 1) * 8;
  arch::ldmatrix_x4(b, tile + SmemTile<kCols>::offset(row, col));
}

// the same B operands from a tile stored [k][n] (transposed by ldmatrix.trans)
template <int kCols>
HSTU_DEVICE HSTU_FORCEINLINE void load_b_kn(uint32_t (&b)[4], const uint16_t* tile, int k0, int n0, int lane) {
  const int row = k0 + ((lane >> 3) & 1) * 8 + (lane & 7);
  const int col = n0 + (lane >> 4) * 8;
  arch::ldmatrix_x4_trans(b, tile + SmemTile<kCols>::offset(row, col));
}

// A operand rows m0 .. m0 + 15, k0 .. k0 + 15 from an fp32 tile stored [k][m] with leading dimension ld,
// rounded to 16 bits
template <typename Element>
HSTU_DEVICE HSTU_FORCEINLINE void load_a_f32_km(uint32_t (&a)[4], const float* tile, int ld, int m0, int k0,
                                                const Lane& l) {
HSTU_UNROLL
  for (int q = 0; q < 4; ++q) {
    const int m = m0 + l.g + 8 * (q & 1);
    const int k = k0 + 2 * l.t + 8 * (q >> 1);
    a[q] = arch::pack2<Element>(tile[k * ld + m], tile[(k + 1) * ld + m]);
  }
}

// the A operand of one 16-column step from the C fragments of its two 8-column tiles
template <typename Element>
HSTU_DEVICE HSTU_FORCEINLINE void c_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = arch::pack2<Element>(c0[0], c0[1]);
  a[1] = arch::pack2<Element>(c0[2], c0[3]);
  a[2] = arch::pack2<Element>(c1[0], c1[1]);
  a[3] = arch::pack2<Element>(c1[2], c1[3]);
}

// a warp's [16, kCols] fp32 C fragments (n8 tile nt, element e at c[4 nt + e]: a float[kCols / 8][4] or a
// wgmma accumulator float[kCols / 2], the same layout) times `scale`, rounded to 16 bits and stored to this
// thread's two rows row[0], row[1] of `base` (row stride in elements); rows at or past n are skipped
template <typename Element, int kCols>
HSTU_DEVICE HSTU_FORCEINLINE void store_c_rows(uint16_t* base, int64_t row_stride, const int (&row)[2], int n,
                                               const float* c, float scale, const Lane& l) {
  HSTU_UNROLL
  for (int r = 0; r < 2; ++r) {
    if (row[r] >= n) continue;
    uint16_t* out = base + static_cast<int64_t>(row[r]) * row_stride;
    HSTU_UNROLL
    for (int nt = 0; nt < kCols / 8; ++nt) {
      const uint32_t packed = arch::pack2<Element>(c[4 * nt + 2 * r] * scale, c[4 * nt + 2 * r + 1] * scale);
      arch::store_global(reinterpret_cast<uint32_t*>(out + nt * 8 + 2 * l.t), packed);
    }
  }
}

// the SiLU gate sigmoid(x): one MUFU op for bf16 (its error is below bf16 rounding), ex2 + rcp for fp16
template <typename Element>
HSTU_DEVICE HSTU_FORCEINLINE float silu_gate(float x) {
  return arch::sigmoid(x);
}
template <>
HSTU_DEVICE HSTU_FORCEINLINE float silu_gate<bf16>(float x) {
  return arch::sigmoid_tanh(x);
}

}  // namespace hstu
