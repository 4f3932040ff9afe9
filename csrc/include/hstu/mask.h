// the hstu mask as index math, and the tiles each kernel visits.
//
// the op is defined by hstu_kernels/ops/hstu_attention/naive.py. for one sequence of n tokens with t targets,
// u = n - t and the position of token i is p(i) = min(i, u). query i sees key j when
//
//     j == i, or p(j) < p(i) and (max_attn_len == 0 or p(i) - p(j) <= max_attn_len).
//
// keys j >= n are never valid for a real row i < n (p(j) = u >= p(i) and j != i), which the tile builders
// below rely on: a tile may run past the sequence end, its extra keys are masked.
#pragma once

#include "config.h"

namespace hstu {

HSTU_HD int position(int i, int u) { return i < u ? i : u; }

HSTU_HD bool pair_valid(int i, int j, int u, int max_attn_len) {
  if (i == j) return true;
  const int pi = position(i, u);
  const int pj = position(j, u);
  return pj < pi && (max_attn_len == 0 || pi - pj <= max_attn_len);
}

// true when every pair of the nominal tile (queries [m0, m1), keys [n0, n1)) is a real, valid pair, so the
// kernels may skip the mask. sufficient condition: all keys are history tokens strictly before every query
// position (n1 <= min(m0, u)) and the farthest pair is inside the window.
HSTU_HD bool tile_all_valid(int m0, int m1, int n0, int n1, int n, int u, int max_attn_len) {
  if (m1 > n || n1 > n) return false;
  if (n1 > imin(m0, u)) return false;
  return max_attn_len == 0 || position(m1 - 1, u) - n0 <= max_attn_len;
}

// up to two index ranges walked in steps of `step` (tiles of one block size). the second range starts after
// the last tile of the first, so no index is visited twice; a tile may run past its range's end (the mask,
// or the sequence bound, handles the excess).
struct TileRanges {
  int begin0, count0;
  int begin1, count1;

  HSTU_HD int count() const { return count0 + count1; }
  HSTU_HD int start(int t, int step) const {
    return t < count0 ? begin0 + t * step : begin1 + (t - count0) * step;
  }
};

HSTU_HD TileRanges make_tile_ranges(int b0, int e0, int b1, int e1, int step) {
  TileRanges r;
  r.begin0 = b0;
  r.count0 = e0 > b0 ? ceil_div(e0 - b0, step) : 0;
  r.begin1 = imax(b1, b0 + r.count0 * step);
  r.count1 = e1 > r.begin1 ? ceil_div(e1 - r.begin1, step) : 0;
  return r;
}

// key tiles of the query block [m0, m0 + block_m) (forward and dq kernels); needs 0 <= m0 < n.
// a block that starts in the history sees keys [lo, m1): the history window, its own diagonal and, for the
// targets it holds, their own diagonal. a block of targets only sees the history [lo, u) and its diagonal.
HSTU_HD TileRanges key_tiles(int m0, int block_m, int n, int u, int max_attn_len, int block_n) {
  const int m1 = imin(m0 + block_m, n);
  const int p_min = position(m0, u);
  const int lo = max_attn_len > 0 ? imax(p_min - max_attn_len, 0) : 0;
  if (m0 <= u) return make_tile_ranges(lo, m1, 0, 0, block_n);
  return make_tile_ranges(lo, u, m0, m1, block_n);
}

// query tiles of the key block [n0, n0 + block_n) (dk/dv kernel); needs 0 <= n0 < n.
// a block of target keys is seen by its own diagonal only. otherwise history queries see it up to the window
// past its last history key, and target queries see it when that key is inside their window (always without
// a window); target keys inside the block add their diagonal.
HSTU_HD TileRanges query_tiles(int n0, int block_n, int n, int u, int max_attn_len, int block_m) {
  const int n1 = imin(n0 + block_n, n);
  if (n0 >= u) return make_tile_ranges(n0, n1, 0, 0, block_m);
  const int last_hist = imin(n1, u) - 1;
  const int hist_end = max_attn_len > 0 ? imin(u, last_hist + max_attn_len + 1) : u;
  const bool targets_see = max_attn_len == 0 || u - last_hist <= max_attn_len;
  return make_tile_ranges(n0, hist_end, u, targets_see ? n : n1, block_m);
}

}  // namespace hstu
