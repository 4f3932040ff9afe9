// kernel arguments of the sm_90a family: the sm80 params plus the TMA descriptors of the operands it loads by
// TMA. a TensorMap is the 128-byte, 128-aligned opaque CUtensorMap, declared here without <cuda.h> so that the params stay
// torch- and driver-header free; arch/tma_host.h fills it (and checks the size) on the host.
#pragma once

#include <cstdint>

#include "params.h"

namespace hstu {

struct alignas(128) TensorMap {
  uint64_t opaque[16];
};

// q, k, v as 3-d tensor maps (head dim, head, row) with 64-column boxes (q: kBlockM rows, k / v: kBlockN) and
// 128-byte swizzle
struct AttentionFwdSm90Params {
  AttentionFwdParams fwd;
  TensorMap tma_q;
  TensorMap tma_k;
  TensorMap tma_v;
};

}  // namespace hstu
