// tile shapes per kernel and head dim. kBlockM = 16 * warps for the kernels whose warps own query rows.
//
// forward (and the deterministic dq pass): 4 warps, 64 queries x 64 keys; the fp32 output of a warp's 16 rows
// (D / 2 registers per thread) and its 16 x 64 scores (32) stay in registers. backward dk/dv: 8 warps own 128
// keys (16 each) with their dk and dv accumulators (D registers per thread); query tiles of 64 rows at D = 64
// and 32 rows at D = 128 keep the transposed scores and their gradients (BM registers) beside them, 16 rows at
// D = 128 with the time bias (its 16 boundaries live in registers too; 32 rows spilled ~150 bytes on sm_80).
// cached scoring: 4 warps, 64 candidates x 64 history keys.
#pragma once

namespace hstu {

template <int kHeadDim>
struct FwdConfig {
  static constexpr int kNWarps = 4;
  static constexpr int kBlockN = 64;
};

template <int kHeadDim, bool kHasTime = false>
struct BwdConfig {
  static constexpr int kNWarps = 8;
  static constexpr int kBlockM = kHeadDim <= 64 ? 64 : (kHasTime ? 16 : 32);
};

template <int kHeadDim>
struct DqConfig {
  static constexpr int kNWarps = 4;
  static constexpr int kBlockN = 64;
};

template <int kHeadDim>
struct CachedConfig {
  static constexpr int kNWarps = 4;
  static constexpr int kBlockN = 64;
};

}  // namespace hstu
