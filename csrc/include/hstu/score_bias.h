// the bias added to alpha * q.k inside the kernels.
//
// position bias: a tile of queries [m0, m0 + BM) and keys [n0, n0 + BN) needs the relative positions
// r = p(i) - p(j) in [rmin, rmin + BM + BN - 2] with rmin = p(m0) - p(n0 + BN - 1) (p is 1-Lipschitz), so the
// kernels stage that window of the table in shared memory with the tile's keys (cp.async) and read it with a
// 32-bit offset instead of gathering from global memory per score.
//
// time bias: bucket(dt) counts boundaries <= dt. the compare chain runs in 32 bits: dt saturates to
// 2^32 - 2, boundaries <= 2^32 - 2 (negatives clamp to 0) are held in registers and unused slots hold 2^32 - 1
// (never <= a saturated dt); boundaries >= 2^32 - 1 ("huge", 136 years of seconds) are counted exactly by a
// 64-bit path taken only when dt itself is that large. the time table itself sits in shared memory.
#pragma once

#include "arch/arch.h"
#include "bias.h"
#include "mask.h"
#include "params.h"

namespace hstu {

// shared-memory footprint of the staged time table, 16-byte multiple
constexpr int kTimeTableBytes = 32 * 4;

template <int kBlockM, int kBlockN>
struct PosWindow {
  static constexpr int kSize = kBlockM + kBlockN;  // >= kBlockM + kBlockN - 1 entries, 16-byte multiple
  static_assert(kSize % 4 == 0, "");

  // smallest relative position of the nominal tile
  HSTU_HD static int rmin(int m0, int n0, int u) { return position(m0, u) - position(n0 + kBlockN - 1, u); }

  // copy table entries rmin .. rmin + kSize - 1 (clamped into the table) of row `pos` into `window`
  template <int kNThreads>
  HSTU_DEVICE HSTU_FORCEINLINE static void stage(float* window, const float* pos, int rmin, int max_seq_len, int tid) {
    HSTU_UNROLL
    for (int it = 0; it < (kSize + kNThreads - 1) / kNThreads; ++it) {
      const int x = tid + it * kNThreads;
      if (kSize % kNThreads == 0 || x < kSize) {
        const int idx = pos_bias_index(rmin + x, 0, max_seq_len);
        arch::cp_async_4(window + x, pos + idx, true);
      }
    }
  }
};

struct TimeBuckets {
  uint32_t bound[kMaxBoundaries];
  int num_boundaries;
  int num_small;  // boundaries <= 2^32 - 2 (a sorted prefix)
  const int64_t* boundaries;  // global, for the huge ones

  HSTU_DEVICE HSTU_FORCEINLINE void init(const BiasParams& p) {
    num_boundaries = p.num_boundaries;
    boundaries = p.time_boundaries;
    num_small = 0;
    HSTU_UNROLL
    for (int k = 0; k < kMaxBoundaries; ++k) {
      uint32_t b32 = 0xffffffffu;
      if (k < p.num_boundaries) {
        const int64_t b = arch::load_global(p.time_boundaries + k);
        if (b <= int64_t(0xfffffffe)) {
          b32 = b < 0 ? 0u : static_cast<uint32_t>(b);
          ++num_small;
        }
      }
      bound[k] = b32;
    }
  }

  HSTU_DEVICE HSTU_FORCEINLINE int bucket(int64_t tq, int64_t tk) const {
    const int64_t dt = abs_diff(tq, tk);
    const uint32_t dt32 = dt >= int64_t(0xfffffffe) ? 0xfffffffeu : static_cast<uint32_t>(dt);
    int count = 0;
    HSTU_UNROLL
    for (int k = 0; k < kMaxBoundaries; ++k) count += bound[k] <= dt32 ? 1 : 0;
    if (dt >= int64_t(0xffffffff)) {
      for (int k = num_small; k < num_boundaries; ++k) count += arch::load_global(boundaries + k) <= dt ? 1 : 0;
    }
    return count;
  }
};

// this head's time table into shared memory (visible after the next barrier)
HSTU_DEVICE HSTU_FORCEINLINE void stage_time_table(float* table, const BiasParams& p, int h, int tid) {
  if (tid <= p.num_boundaries) table[tid] = arch::load_global(p.time_weight + h * p.time_head_stride + tid);
}

}  // namespace hstu
