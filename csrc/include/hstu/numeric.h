// 16-bit storage types and their conversions, without cuda_fp16.h / cuda_bf16.h.
//
// the kernels only move 16-bit values and convert them to and from fp32, so one plain storage struct per type
// serves the device (conversions in PTX, arch/ptx.cuh) and the host (bit arithmetic below, round to nearest
// even, used by the emulator and the host tests). torch's at::BFloat16 / at::Half have the same layout.
#pragma once

#include <cstring>

#include "config.h"

namespace hstu {

struct bf16 {
  uint16_t bits;
};
struct fp16 {
  uint16_t bits;
};

HSTU_HD uint32_t float_bits(float x) {
#if HSTU_DEVICE_PASS
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

HSTU_HD float bits_float(uint32_t u) {
#if HSTU_DEVICE_PASS
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

// ---- host reference conversions (round to nearest even, NaN stays NaN) ----

HSTU_HD uint16_t host_float_to_bf16(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  const uint32_t bias = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + bias) >> 16);
}

HSTU_HD float host_bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

HSTU_HD uint16_t host_float_to_fp16(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (absu >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  const int exp = static_cast<int>(absu >> 23) - 127;
  if (exp >= -14) {  // normal half
    // 13 mantissa bits drop; round to nearest even on the combined exponent|mantissa (a carry bumps the exponent)
    const uint32_t m = absu + 0xfffu + ((absu >> 13) & 1u);
    return static_cast<uint16_t>(sign | (((m >> 13) - (112u << 10)) & 0x7fffu));
  }
  if (exp < -25) return static_cast<uint16_t>(sign);  // below half the smallest subnormal: zero
  // subnormal half: value = mant * 2^-24 with the implicit bit made explicit
  const uint32_t mant = (absu & 0x7fffffu) | 0x800000u;
  const int shift = -exp - 1;  // 14 .. 24: bits of mant below 2^-24
  const uint32_t keep = mant >> shift;
  const uint32_t rest = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  const uint32_t rounded = keep + ((rest > half || (rest == half && (keep & 1u))) ? 1u : 0u);
  return static_cast<uint16_t>(sign | rounded);
}

HSTU_HD float host_fp16_to_float(uint16_t h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    // subnormal: mant * 2^-24
    const float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

}  // namespace hstu
