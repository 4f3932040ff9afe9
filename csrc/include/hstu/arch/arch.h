// the one place kernels get thread indices, barriers, warp-level matrix ops, async copies, global memory
// access, atomics, 16-bit conversions and fast math. the device build maps each to PTX (ptx.cuh); a host
// build with HSTU_HOST_EMULATION maps them to a CPU emulator of one CTA (emulation.h), so the same kernel
// source runs on the CPU in tests. kernels must not touch threadIdx, __syncthreads, raw pointers to global
// memory or inline asm directly: every such access goes through here.
#pragma once

#include "../config.h"
#include "../numeric.h"

namespace hstu {
namespace arch {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

}  // namespace arch
}  // namespace hstu

#if defined(HSTU_HOST_EMULATION)
#include "emulation.h"
#elif defined(__CUDACC__)
#include "ptx.cuh"
#endif
