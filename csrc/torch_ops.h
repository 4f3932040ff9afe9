// the torch-facing entry points of hstu_kernels._C (defined in csrc/<op>/launch.cu, registered by bindings.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace hstu_torch {

using OptTensor = std::optional<at::Tensor>;

at::Tensor attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& seq_offsets,
                         int64_t max_seq_len, int64_t max_len, double alpha, double scale, const OptTensor& timestamps,
                         const OptTensor& query_timestamps, const OptTensor& pos_weight, const OptTensor& time_weight,
                         const OptTensor& time_boundaries, const OptTensor& num_targets, int64_t max_attn_len);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_bwd(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& seq_offsets, int64_t max_seq_len, int64_t max_len, double alpha, double scale,
    const OptTensor& timestamps, const OptTensor& query_timestamps, const OptTensor& pos_weight,
    const OptTensor& time_weight, const OptTensor& time_boundaries, const OptTensor& num_targets,
    int64_t max_attn_len, bool need_dpw, bool need_dtw, bool deterministic);

at::Tensor cached_attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& cand_offsets, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& cache_offsets, int64_t max_seq_len, int64_t max_cands, double alpha,
                                double scale, const OptTensor& timestamps, const OptTensor& query_timestamps,
                                const OptTensor& cache_timestamps, const OptTensor& pos_weight,
                                const OptTensor& time_weight, const OptTensor& time_boundaries, int64_t max_attn_len);

// head dims this build compiled (HSTU_CUDA_HDIMS)
std::vector<int64_t> built_head_dims();

// kernel families this build compiled: "sm80" always, "sm90" with sm_90a (HSTU_SM90)
std::vector<std::string> kernel_families();

}  // namespace hstu_torch
