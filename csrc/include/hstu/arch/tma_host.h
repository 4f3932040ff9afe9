// host side of TMA: a 3-d tensor map over the jagged [L, H, D] rows of a 16-bit tensor, boxes of `box_rows` rows
// x 64 columns of one head, 128-byte swizzle (the layout arch/sm90.cuh's descriptors read). the driver's
// cuTensorMapEncodeTiled is reached through the runtime's entry-point query, so nothing links libcuda. the host
// emulation build fills the emulator's own tensor map instead (arch/sm90_emulation.h).
#pragma once

#include <cstdint>

#include "../numeric.h"
#include "../params_sm90.h"
#include "launch.h"

#if defined(HSTU_HOST_EMULATION)

#include <cstring>

#include "sm90_emulation.h"

namespace hstu {
namespace arch {

// the emulator's tensor map: the same fields the driver would check, read back by sm90_emulation.h
template <typename Element>
inline LaunchStatus encode_rows_map(TensorMap* out, const void* base, int64_t rows, int heads, int head_dim,
                                    int64_t row_stride, int64_t head_stride, int box_rows) {
  if (row_stride <= 0 || head_stride <= 0 || (row_stride * 2) % 16 != 0 || (head_stride * 2) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(base) % 16 != 0 || box_rows < 1 || box_rows > 256)
    return 1;
  sm90::EmuTensorMap m{static_cast<const char*>(base), {head_dim, heads, rows}, {head_stride * 2, row_stride * 2},
                       {64, 1, box_rows}, 2};
  std::memset(out, 0, sizeof(*out));
  std::memcpy(out, &m, sizeof(m));
  return kLaunchOk;
}

}  // namespace arch
}  // namespace hstu

#else

#include <cuda.h>
#include <cuda_runtime.h>

namespace hstu {
namespace arch {

static_assert(sizeof(TensorMap) == sizeof(CUtensorMap) && alignof(TensorMap) >= alignof(CUtensorMap),
              "hstu::TensorMap must mirror CUtensorMap");

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

inline EncodeTiledFn encode_tiled_fn() {
  static EncodeTiledFn fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    const cudaError_t err =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &found);
#else
    const cudaError_t err = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &ptr, cudaEnableDefault, &found);
#endif
    if (err != cudaSuccess || found != cudaDriverEntryPointSuccess)
      return static_cast<EncodeTiledFn>(nullptr);
    return reinterpret_cast<EncodeTiledFn>(ptr);
  }();
  return fn;
}

template <typename Element>
constexpr CUtensorMapDataType tma_dtype();
template <>
constexpr CUtensorMapDataType tma_dtype<bf16>() {
  return CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
}
template <>
constexpr CUtensorMapDataType tma_dtype<fp16>() {
  return CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
}

// rows: the tensor's row count (rows past it read as zeros); strides in elements. cudaErrorInvalidValue when
// the driver refuses the layout (strides not 16-byte multiples, a misaligned base)
template <typename Element>
inline cudaError_t encode_rows_map(TensorMap* out, const void* base, int64_t rows, int heads, int head_dim,
                                   int64_t row_stride, int64_t head_stride, int box_rows) {
  const EncodeTiledFn encode = encode_tiled_fn();
  if (encode == nullptr) return cudaErrorNotSupported;
  if (row_stride <= 0 || head_stride <= 0 || (row_stride * 2) % 16 != 0 || (head_stride * 2) % 16 != 0)
    return cudaErrorInvalidValue;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(head_stride) * 2, static_cast<cuuint64_t>(row_stride) * 2};
  const cuuint32_t box[3] = {64, 1, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  const CUresult res = encode(reinterpret_cast<CUtensorMap*>(out), tma_dtype<Element>(), 3, const_cast<void*>(base),
                              dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                              CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return res == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace arch
}  // namespace hstu

#endif
