// relative position and time-bucket bias as index math (hstu_kernels/ops/hstu_attention/naive.py).
//
//   pos_weight[h', p(i) - p(j) + max_seq_len - 1]           table [Hb, 2 * max_seq_len - 1]
//   time_weight[h', bucket(|query_ts[i] - ts[j]|)]          table [Hb, num_boundaries + 1]
//
// bucket(x) counts the sorted boundaries <= x (torch.bucketize(x, boundaries, right=True)).
#pragma once

#include "config.h"

namespace hstu {

constexpr int kMaxBoundaries = 16;
constexpr int kMaxBuckets = kMaxBoundaries + 1;

// the table column of the pair at positions (pi, pj). valid pairs have 0 <= pi - pj < max_seq_len; masked
// pairs (a key past the sequence end sits at u, which may equal max_seq_len) are clamped into the table so a
// kernel may read the entry before masking it.
HSTU_HD int pos_bias_index(int pi, int pj, int max_seq_len) {
  const int idx = pi - pj + max_seq_len - 1;
  return idx < 0 ? 0 : (idx > 2 * max_seq_len - 2 ? 2 * max_seq_len - 2 : idx);
}

HSTU_HD int64_t abs_diff(int64_t a, int64_t b) { return a > b ? a - b : b - a; }

// number of boundaries <= dt; a fixed-trip loop of compares (no branches on the data).
HSTU_HD int time_bucket(int64_t dt, const int64_t* boundaries, int num_boundaries) {
  int bucket = 0;
HSTU_UNROLL
  for (int k = 0; k < kMaxBoundaries; ++k) {
    if (k < num_boundaries) bucket += boundaries[k] <= dt ? 1 : 0;
  }
  return bucket;
}

}  // namespace hstu
