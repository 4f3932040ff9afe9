// shared-memory tiles of 16-bit elements and their global -> shared copies.
//
// a tile is `rows` x kCols elements, row-major, each row padded by one 16-byte chunk (kLd = kCols + 8). with
// kCols / 8 a multiple of 8 chunks, row r starts r chunks past a bank-group boundary, so the 8 rows one ldmatrix
// reads (the same chunk of each) hit 8 different bank groups. unlike an xor swizzle the offset stays linear in
// the column, so the fragment addresses of one thread differ by compile-time constants (immediate offsets, not
// registers).
#pragma once

#include "arch/arch.h"
#include "config.h"

namespace hstu {

template <int kCols>
struct SmemTile {
  static_assert(kCols % 64 == 0, "rows of a multiple of 8 chunks keep the padding conflict-free");
  static constexpr int kChunks = kCols / 8;
  static constexpr int kLd = kCols + 8;

  HSTU_HD static int offset(int row, int col) { return row * kLd + col; }
  HSTU_HOST_DEVICE static constexpr int elements(int rows) { return rows * kLd; }
};

// rows [row_begin, row_begin + kRows) of a [*, kCols] global matrix (row stride in elements) into a padded
// tile; rows at or past `rows_valid` (counted from row_begin) are zero-filled without reading global memory.
template <int kRows, int kCols, int kNThreads>
HSTU_DEVICE HSTU_FORCEINLINE void load_tile_async(uint16_t* smem, const uint16_t* gmem, int64_t row_stride, int row_begin,
                                                  int rows_valid) {
  using Tile = SmemTile<kCols>;
  constexpr int kTotal = kRows * Tile::kChunks;
  constexpr int kIters = (kTotal + kNThreads - 1) / kNThreads;
  const int tid = arch::thread_idx();
  // not unrolled: unrolled, every iteration's 64-bit source address stays live across the whole tile loop
  HSTU_NO_UNROLL
  for (int it = 0; it < kIters; ++it) {
    const int idx = tid + it * kNThreads;
    if (kTotal % kNThreads == 0 || idx < kTotal) {
      const int r = idx / Tile::kChunks;
      const int c = (idx % Tile::kChunks) * 8;
      const bool ok = r < rows_valid;
      const uint16_t* src = ok ? gmem + (static_cast<int64_t>(row_begin) + r) * row_stride + c : gmem;
      arch::cp_async_16(smem + Tile::offset(r, c), src, ok);
    }
  }
}

// int64 values [begin, begin + kCount) of a global vector into shared memory, zero past `valid`
template <int kCount, int kNThreads>
HSTU_DEVICE HSTU_FORCEINLINE void load_i64_async(int64_t* smem, const int64_t* gmem, int begin, int valid) {
  const int tid = arch::thread_idx();
  for (int idx = tid; idx < kCount; idx += kNThreads) {
    const bool ok = idx < valid;
    arch::cp_async_8(smem + idx, ok ? gmem + begin + idx : gmem, ok);
  }
}

}  // namespace hstu
