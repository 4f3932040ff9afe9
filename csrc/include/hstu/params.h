// kernel arguments: raw pointers, int64 strides (in elements), sizes and flags. filled by the torch launchers
// (csrc/<op>/launch.cu) and by the host emulation driver, read by the kernels.
//
// conventions every filler must follow (the kernels do not check them):
//   - q/k/v/out/dout/dq/dk/dv: [L, H, D] with unit stride in D, rows 16-byte aligned (row stride and head stride
//     multiples of 8 elements, base pointers 16-byte aligned): the tiles are loaded with 16-byte cp.async;
//   - offsets and num_targets are int32; timestamps and boundaries are int64;
//   - bias tables are fp32, [Hb, width] with a head stride of 0 when Hb == 1 (one table shared by all heads);
//   - timestamps may be null only when time_weight is; query_timestamps == timestamps when not given.
#pragma once

#include "config.h"

namespace hstu {

struct BiasParams {
  const float* pos_weight = nullptr;  // [Hb, 2 * max_seq_len - 1]
  int64_t pos_head_stride = 0;
  const float* time_weight = nullptr;  // [Hb, num_boundaries + 1]
  int64_t time_head_stride = 0;
  const int64_t* time_boundaries = nullptr;  // [num_boundaries], sorted
  int num_boundaries = 0;
  int max_seq_len = 1;
};

struct AttentionFwdParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  int64_t q_row_stride = 0, q_head_stride = 0;
  int64_t k_row_stride = 0, k_head_stride = 0;
  int64_t v_row_stride = 0, v_head_stride = 0;
  int64_t o_row_stride = 0, o_head_stride = 0;

  const int32_t* seq_offsets = nullptr;  // [B + 1]
  const int32_t* num_targets = nullptr;  // [B] or null
  const int64_t* timestamps = nullptr;  // [L] keys' times
  const int64_t* query_timestamps = nullptr;  // [L] queries' times
  BiasParams bias;

  int batch = 0;
  int num_heads = 0;
  int head_dim = 0;
  int max_len = 0;  // longest sequence in the batch (sizes the grid)
  int max_attn_len = 0;  // 0: no window
  float alpha = 1.0f;
  float scale = 1.0f;
};

struct AttentionBwdParams : AttentionFwdParams {
  const void* dout = nullptr;
  int64_t do_row_stride = 0, do_head_stride = 0;
  void* dk = nullptr;
  void* dv = nullptr;
  int64_t dk_row_stride = 0, dk_head_stride = 0;
  int64_t dv_row_stride = 0, dv_head_stride = 0;

  // non-deterministic mode: dq accumulates in fp32 with atomics (alpha folded in), cast by the launcher.
  float* dq_accum = nullptr;  // [L, H, D] fp32, zeroed
  int64_t dq_accum_row_stride = 0, dq_accum_head_stride = 0;
  // deterministic mode: a second kernel (one CTA per query block) writes dq directly, no atomics.
  void* dq = nullptr;
  int64_t dq_row_stride = 0, dq_head_stride = 0;
  bool deterministic = false;

  // bias-table gradients (fp32). non-deterministic: atomics into [Hb, width] tables, zeroed. deterministic:
  // every dk/dv CTA writes its partial sums to its own slot of a [H, num_slots, width] scratch (zeroed), and a
  // reduction kernel sums the slots in a fixed order into the tables.
  bool compute_dpos = false;
  bool compute_dtime = false;
  float* dpos_weight = nullptr;  // [Hb, 2 * max_seq_len - 1]
  int64_t dpos_head_stride = 0;
  float* dtime_weight = nullptr;  // [Hb, num_boundaries + 1]
  int64_t dtime_head_stride = 0;
  float* dpos_partial = nullptr;  // [H, num_slots, pos_partial_width]: entry r = p(i) - p(j) >= 0
  float* dtime_partial = nullptr;  // [H, num_slots, kMaxBuckets]
  int num_slots = 0;
  int pos_partial_width = 0;
};

struct CachedFwdParams {
  const void* q = nullptr;  // [C, H, D] candidates
  const void* k = nullptr;  // [C, H, D]
  const void* v = nullptr;  // [C, H, D]
  const void* k_cache = nullptr;  // [Lh, H, D] histories
  const void* v_cache = nullptr;
  void* out = nullptr;  // [C, H, D]
  int64_t q_row_stride = 0, q_head_stride = 0;
  int64_t k_row_stride = 0, k_head_stride = 0;
  int64_t v_row_stride = 0, v_head_stride = 0;
  int64_t kc_row_stride = 0, kc_head_stride = 0;
  int64_t vc_row_stride = 0, vc_head_stride = 0;
  int64_t o_row_stride = 0, o_head_stride = 0;

  const int32_t* cand_offsets = nullptr;  // [B + 1]
  const int32_t* cache_offsets = nullptr;  // [B + 1]
  const int64_t* timestamps = nullptr;  // [C] candidates' own times (key side of the self term)
  const int64_t* query_timestamps = nullptr;  // [C]
  const int64_t* cache_timestamps = nullptr;  // [Lh]
  BiasParams bias;

  int batch = 0;
  int num_heads = 0;
  int head_dim = 0;
  int max_cands = 0;  // most candidates of any user (sizes the grid)
  int max_attn_len = 0;
  float alpha = 1.0f;
  float scale = 1.0f;
};

}  // namespace hstu
