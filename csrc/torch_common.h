// checks and conversions the torch launchers share: the only torch code beside launch.cu and bindings.cpp.
//
// the python side (hstu_kernels/ops/<op>/cuda_impl.py) has already run the op's argument checks with clear
// ValueError / TypeError messages; these TORCH_CHECKs guard the C++ entry points against direct calls.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <vector>

#include "hstu/bias.h"
#include "hstu/numeric.h"
#include "hstu/params.h"
#include "torch_ops.h"

namespace hstu_torch {

inline bool head_dim_built(int64_t d) {
  for (int64_t x : built_head_dims())
    if (x == d) return true;
  return false;
}

inline void check_same_device(const at::Tensor& x, const char* name, const at::Tensor& q) {
  TORCH_CHECK(x.is_cuda() && x.device() == q.device(), "hstu_kernels: ", name, " must be on ", q.device(),
              " (got ", x.device(), ")");
}

// q / k / v-like [rows, H, D] in bf16 / fp16; returns the tensor itself when the kernels can read it in place
// (unit stride in D, row and head strides multiples of 8 elements, 16-byte aligned), else a contiguous copy
inline at::Tensor rows_tensor(const at::Tensor& x, const char* name, const at::Tensor& q, int64_t heads,
                              int64_t head_dim) {
  check_same_device(x, name, q);
  TORCH_CHECK(x.dim() == 3 && x.size(1) == heads && x.size(2) == head_dim, "hstu_kernels: ", name,
              " must have shape [rows, ", heads, ", ", head_dim, "], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == q.scalar_type(), "hstu_kernels: ", name, " must have q's dtype ", q.scalar_type(),
              ", got ", x.scalar_type());
  const bool in_place = x.stride(2) == 1 && x.stride(0) % 8 == 0 && x.stride(1) % 8 == 0 &&
                        reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
  return in_place ? x : x.contiguous();
}

inline at::Tensor int_vector(const at::Tensor& x, const char* name, const at::Tensor& q, at::ScalarType type,
                             int64_t length) {
  check_same_device(x, name, q);
  TORCH_CHECK(x.dim() == 1 && (length < 0 || x.size(0) == length), "hstu_kernels: ", name, " must have shape [",
              length, "], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kInt || x.scalar_type() == at::kLong, "hstu_kernels: ", name,
              " must be int32 or int64");
  return x.to(type).contiguous();
}

// the longest segment of a jagged layout (one device-to-host read)
inline int64_t longest(const at::Tensor& offsets) {
  if (offsets.size(0) <= 1) return 0;
  return (offsets.slice(0, 1) - offsets.slice(0, 0, -1)).max().item<int64_t>();
}

// the bias tables: fp32 contiguous, head stride 0 for a table shared by every head. `keep` holds the converted
// tensors alive until the launch is queued
inline void fill_bias(hstu::BiasParams& b, int64_t max_seq_len, int64_t heads, const OptTensor& pos_weight,
                      const OptTensor& time_weight, const OptTensor& time_boundaries, const at::Tensor& q,
                      std::vector<at::Tensor>& keep) {
  b.max_seq_len = static_cast<int>(max_seq_len);
  if (pos_weight.has_value()) {
    const at::Tensor& pw = *pos_weight;
    check_same_device(pw, "pos_weight", q);
    TORCH_CHECK(pw.dim() == 2 && (pw.size(0) == 1 || pw.size(0) == heads) && pw.size(1) == 2 * max_seq_len - 1,
                "hstu_kernels: pos_weight must have shape [1 or H, 2 * max_seq_len - 1], got ", pw.sizes());
    keep.push_back(pw.to(at::kFloat).contiguous());
    b.pos_weight = keep.back().data_ptr<float>();
    b.pos_head_stride = pw.size(0) > 1 ? keep.back().stride(0) : 0;
  }
  if (time_weight.has_value()) {
    TORCH_CHECK(time_boundaries.has_value(), "hstu_kernels: time_weight needs time_boundaries");
    const at::Tensor& tw = *time_weight;
    check_same_device(tw, "time_weight", q);
    const int64_t nb = time_boundaries->size(0);
    TORCH_CHECK(nb <= hstu::kMaxBoundaries, "hstu_kernels: at most ", hstu::kMaxBoundaries,
                " time boundaries, got ", nb);
    TORCH_CHECK(tw.dim() == 2 && (tw.size(0) == 1 || tw.size(0) == heads) && tw.size(1) == nb + 1,
                "hstu_kernels: time_weight must have shape [1 or H, len(time_boundaries) + 1], got ", tw.sizes());
    keep.push_back(tw.to(at::kFloat).contiguous());
    b.time_weight = keep.back().data_ptr<float>();
    b.time_head_stride = tw.size(0) > 1 ? keep.back().stride(0) : 0;
    keep.push_back(int_vector(*time_boundaries, "time_boundaries", q, at::kLong, nb));
    b.time_boundaries = keep.back().data_ptr<int64_t>();
    b.num_boundaries = static_cast<int>(nb);
  }
}

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err != cudaErrorInvalidConfiguration, "hstu_kernels: ", what, " needs more shared memory per block "
              "than this GPU allows (the kernels target A100 / H100-class GPUs: 163 / 227 KiB)");
  TORCH_CHECK(err == cudaSuccess, "hstu_kernels: ", what, " launch failed: ", cudaGetErrorString(err));
}

}  // namespace hstu_torch
