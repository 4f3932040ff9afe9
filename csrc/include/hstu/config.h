// compile-environment macros shared by every hstu header.
//
// three environments include these headers:
//   - nvcc, device pass (__CUDA_ARCH__ defined): the real kernels, PTX intrinsics;
//   - nvcc host pass or a plain host compiler: host-side code (launch helpers, host math);
//   - a plain host compiler with HSTU_HOST_EMULATION defined: the kernels themselves run on the CPU
//     through a warp emulator (tests only; see arch/emulation.h).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define HSTU_HOST_DEVICE __host__ __device__
#define HSTU_DEVICE __device__
#define HSTU_GLOBAL __global__
#define HSTU_FORCEINLINE __forceinline__
#else
// a host compiler sees plain functions: the math headers compile with g++ alone
#define HSTU_HOST_DEVICE
#define HSTU_DEVICE
#define HSTU_GLOBAL
#define HSTU_FORCEINLINE inline __attribute__((always_inline))
#endif

#if defined(__CUDA_ARCH__)
#define HSTU_DEVICE_PASS 1
#else
#define HSTU_DEVICE_PASS 0
#endif

#if defined(HSTU_HOST_EMULATION) && defined(__CUDACC__)
#error "HSTU_HOST_EMULATION is for host compilers only (g++/clang++), not nvcc"
#endif

#define HSTU_HD HSTU_HOST_DEVICE HSTU_FORCEINLINE

// loops over register fragments must unroll fully (a dynamically indexed register array spills to local memory)
#if defined(__CUDACC__)
#define HSTU_UNROLL _Pragma("unroll")
#define HSTU_NO_UNROLL _Pragma("unroll 1")
#else
#define HSTU_UNROLL
#define HSTU_NO_UNROLL
#endif

namespace hstu {

HSTU_HD int imin(int a, int b) { return a < b ? a : b; }
HSTU_HD int imax(int a, int b) { return a > b ? a : b; }
HSTU_HD int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace hstu
