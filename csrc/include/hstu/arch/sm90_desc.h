// the bits of a wgmma shared-memory matrix descriptor with the 128-byte swizzle (PTX ISA, "Matrix Descriptor"):
// start address >> 4 in [0, 14), LBO >> 4 in [16, 30), SBO >> 4 in [32, 46), base offset 0 in [49, 52) (the
// buffers are 1024-byte aligned), swizzle mode 1 (128 bytes) in [62, 64). shared by the device layer
// (sm90.cuh) and its emulation (sm90_emulation.h), which decodes the same bits.
#pragma once

#include "../config.h"

namespace hstu {
namespace arch {
namespace sm90 {

HSTU_HD uint64_t desc_sw128_bits(uint32_t smem_address, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  uint64_t d = (static_cast<uint64_t>(smem_address) & 0x3FFFF) >> 4;
  d |= static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16;
  d |= static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32;
  d |= static_cast<uint64_t>(1) << 62;
  return d;
}

}  // namespace sm90
}  // namespace arch
}  // namespace hstu
