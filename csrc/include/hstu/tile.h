// shared-memory tiles of 16-bit elements and their global -> shared copies.
//
// a tile is `rows` x kCols elements, row-major in 16-byte chunks of 8 elements; chunk c of row r is stored at
// chunk c ^ (r % 8). the 8 rows one ldmatrix reads (one chunk each) then hit 8 different bank groups, and a
// row's chunks stay a permutation of themselves (kCols / 8 >= 8 chunks per row).
#pragma once

#include "arch/arch.h"
#include "config.h"

namespace hstu {

template <int kCols>
struct SwizzledTile {
  static_assert(kCols % 64 == 0, "the swizzle needs at least 8 chunks of 8 elements per row");
  static constexpr int kChunks = kCols / 8;

  // element offset of (row, col); col % 8 == 0 gives the start of a 16-byte chunk
  HSTU_HD static int offset(int row, int col) { return row * kCols + (((col >> 3) ^ (row & 7)) << 3) + (col & 7); }
};

// rows [row_begin, row_begin + kRows) of a [*, kCols] global matrix (row stride in elements) into a swizzled
// tile; rows at or past `rows_valid` (counted from row_begin) are zero-filled without reading global memory.
template <int kRows, int kCols, int kNThreads>
HSTU_DEVICE HSTU_FORCEINLINE void load_tile_async(uint16_t* smem, const uint16_t* gmem, int64_t row_stride, int row_begin,
                                                  int rows_valid) {
  using Tile = SwizzledTile<kCols>;
  constexpr int kTotal = kRows * Tile::kChunks;
  constexpr int kIters = (kTotal + kNThreads - 1) / kNThreads;
  const int tid = arch::thread_idx();
  HSTU_UNROLL
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
