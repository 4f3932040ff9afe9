// kernel launch for both builds: a __global__ entry plus <<<>>> on the device build, the CTA emulator on the
// host emulation build. a kernel is a struct with kNThreads, kSmemBytes and a static run(params).
#pragma once

#include "arch.h"

#if defined(HSTU_HOST_EMULATION)

namespace hstu {
namespace arch {

using Stream = void*;
using LaunchStatus = int;
constexpr LaunchStatus kLaunchOk = 0;

template <typename Kernel, typename Params>
inline LaunchStatus launch_kernel(Dim3 grid, const Params& params, Stream) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return kLaunchOk;
  emu::launch(grid, Kernel::kNThreads, Kernel::kSmemBytes, [&] { Kernel::run(params); });
  return kLaunchOk;
}

template <typename Kernel, typename Params>
inline LaunchStatus launch_kernel_grid_constant(Dim3 grid, const Params& params, Stream stream) {
  return launch_kernel<Kernel>(grid, params, stream);
}

inline const char* launch_error_string(LaunchStatus) { return "ok"; }

}  // namespace arch
}  // namespace hstu

#elif defined(__CUDACC__)

#include <cuda_runtime.h>

namespace hstu {
namespace arch {

using Stream = cudaStream_t;
using LaunchStatus = cudaError_t;
constexpr LaunchStatus kLaunchOk = cudaSuccess;

// the largest dynamic shared memory a CTA may opt into, per target (checked when each target is compiled).
// note: sm_80 code also runs on sm_86 / sm_89, which allow only 99 KiB: kernels above that fail to launch there
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
constexpr int kMaxDynamicSmem = 227 * 1024;
#elif defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 800 || __CUDA_ARCH__ == 870)
constexpr int kMaxDynamicSmem = 163 * 1024;
#else
constexpr int kMaxDynamicSmem = 99 * 1024;
#endif

template <typename Kernel, typename Params>
__global__ void __launch_bounds__(Kernel::kNThreads, Kernel::kMinBlocksPerSm) kernel_entry(const Params params) {
#if defined(__CUDA_ARCH__)
  static_assert(Kernel::kSmemBytes <= kMaxDynamicSmem, "the kernel's shared memory exceeds this target's limit");
#endif
  Kernel::run(params);
}

// the sm_90a kernels take TMA descriptors inside their params, whose address must stay in parameter space
template <typename Kernel, typename Params>
__global__ void __launch_bounds__(Kernel::kNThreads, Kernel::kMinBlocksPerSm)
    kernel_entry_grid_constant(const __grid_constant__ Params params) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(Kernel::kSmemBytes <= kMaxDynamicSmem, "the kernel's shared memory exceeds this target's limit");
#elif defined(__CUDA_ARCH__)
  // sm_90a-only kernels are compiled (to a trap) for the other targets too: their limit is sm_90a's
  static_assert(Kernel::kSm90aOnly || Kernel::kSmemBytes <= kMaxDynamicSmem,
                "the kernel's shared memory exceeds this target's limit");
#endif
  Kernel::run(params);
}

template <typename Kernel, typename Params>
inline LaunchStatus launch_entry(void (*fn)(const Params), Dim3 grid, const Params& params, Stream stream) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return cudaSuccess;
  if (Kernel::kSmemBytes > 48 * 1024) {
    // a clear error instead of cudaFuncSetAttribute's "invalid argument" on GPUs with less shared memory
    int device = 0, optin = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (optin > 0 && Kernel::kSmemBytes > optin) return cudaErrorInvalidConfiguration;
    const cudaError_t err =
        cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Kernel::kSmemBytes));
    if (err != cudaSuccess) return err;
  }
  fn<<<dim3(grid.x, grid.y, grid.z), Kernel::kNThreads, Kernel::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

template <typename Kernel, typename Params>
inline LaunchStatus launch_kernel(Dim3 grid, const Params& params, Stream stream) {
  return launch_entry<Kernel, Params>(kernel_entry<Kernel, Params>, grid, params, stream);
}

template <typename Kernel, typename Params>
inline LaunchStatus launch_kernel_grid_constant(Dim3 grid, const Params& params, Stream stream) {
  return launch_entry<Kernel, Params>(kernel_entry_grid_constant<Kernel, Params>, grid, params, stream);
}

inline const char* launch_error_string(LaunchStatus s) { return cudaGetErrorString(s); }

}  // namespace arch
}  // namespace hstu

#endif
