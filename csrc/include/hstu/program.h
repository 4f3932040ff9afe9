// the prologue every kernel shares: which (segment, head) and which block of that segment this CTA owns.
#pragma once

#include <cstdint>

#include "arch/arch.h"

namespace hstu {

struct ProgramBlock {
  int b;      // segment (sequence or user)
  int h;      // head
  int start;  // the segment's first row in the jagged layout
  int n;      // the segment's length
  int row0;   // the block's first row inside the segment (>= n: nothing to do)
};

// grid x is b * num_heads + h; `block` numbers the kBlock-row blocks of segment b (offsets: [B + 1])
template <int kBlock>
HSTU_DEVICE HSTU_FORCEINLINE ProgramBlock program_block(const int32_t* offsets, int num_heads, int block) {
  const int bh = arch::block_idx_x();
  const int b = bh / num_heads;
  const int start = arch::load_global(offsets + b);
  return {b, bh % num_heads, start, arch::load_global(offsets + b + 1) - start, block * kBlock};
}

}  // namespace hstu
