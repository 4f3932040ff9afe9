// host-side sizes the backward launcher allocates (torch-free, shared by csrc/hstu_attention/launch.cu and the
// host emulation driver).
#pragma once

#include <cstddef>

#include "../bias.h"
#include "../kernel_configs.h"
#include "../params.h"

namespace hstu {

// the dk/dv kernel's key block: 16 keys per warp
template <int kHeadDim>
constexpr int bwd_block_n() {
  return 16 * BwdConfig<kHeadDim>::kNWarps;
}

// deterministic mode gives every dk/dv CTA (sequence b, key block kb) its own partial-sum slot
//   slot = b + floor(seq_start_b / block_n) + kb,
// unique across sequences because floor(s / bn) + ceil(n / bn) <= floor((s + n) / bn) + 1, and below
// B + ceil(L / block_n) + 1.
HSTU_HD int bwd_num_slots(int batch, int64_t total_len, int block_n) {
  return batch + static_cast<int>((total_len + block_n - 1) / block_n) + 1;
}

HSTU_HD int bwd_slot(int b, int seq_start, int key_block, int block_n) { return b + seq_start / block_n + key_block; }

struct BwdWorkspace {
  int num_slots = 0;
  int pos_partial_width = 0;  // relative positions r = 0 .. width - 1 a valid pair can have
  size_t dpos_partial_floats = 0;  // [H, num_slots, width]
  size_t dtime_partial_floats = 0;  // [H, num_slots, kMaxBuckets]
};

// needs p.batch, p.num_heads, p.max_len, p.bias, p.deterministic, p.compute_dpos, p.compute_dtime and the total
// length L = seq_offsets[B] (given as total_len)
template <int kHeadDim>
BwdWorkspace bwd_workspace(const AttentionBwdParams& p, int64_t total_len) {
  BwdWorkspace ws;
  if (!p.deterministic || !(p.compute_dpos || p.compute_dtime)) return ws;
  ws.num_slots = bwd_num_slots(p.batch, total_len, bwd_block_n<kHeadDim>());
  ws.pos_partial_width = p.max_len < p.bias.max_seq_len ? p.max_len : p.bias.max_seq_len;
  if (p.compute_dpos)
    ws.dpos_partial_floats = static_cast<size_t>(p.num_heads) * ws.num_slots * ws.pos_partial_width;
  if (p.compute_dtime) ws.dtime_partial_floats = static_cast<size_t>(p.num_heads) * ws.num_slots * kMaxBuckets;
  return ws;
}

}  // namespace hstu
