// torch launcher of hstu cached (m-falcon) scoring: check the tensors, fill the kernel params, dispatch.
// the meaning of the op: hstu_kernels/ops/hstu_cached_attention/naive.py; the kernel: csrc/include/hstu/.
#include <ATen/ATen.h>

#include "../torch_common.h"
#include "hstu/api.h"

namespace hstu_torch {

namespace {

template <typename Element>
cudaError_t dispatch_cached(int64_t d, const hstu::CachedFwdParams& p, cudaStream_t s) {
  switch (d) {
#ifdef HSTU_HDIM_64
    case 64:
      return hstu::run_cached_attention_fwd<Element, 64>(p, s);
#endif
#ifdef HSTU_HDIM_128
    case 128:
      return hstu::run_cached_attention_fwd<Element, 128>(p, s);
#endif
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

at::Tensor cached_attention_fwd(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                const at::Tensor& cand_offsets, const at::Tensor& k_cache_in,
                                const at::Tensor& v_cache_in, const at::Tensor& cache_offsets, int64_t max_seq_len,
                                int64_t max_cands, double alpha, double scale, const OptTensor& timestamps,
                                const OptTensor& query_timestamps, const OptTensor& cache_timestamps,
                                const OptTensor& pos_weight, const OptTensor& time_weight,
                                const OptTensor& time_boundaries, int64_t max_attn_len) {
  TORCH_CHECK(q_in.is_cuda(), "hstu_kernels: q must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(q_in.device());
  TORCH_CHECK(q_in.scalar_type() == at::kBFloat16 || q_in.scalar_type() == at::kHalf,
              "hstu_kernels: the CUDA backend takes bfloat16 or float16, got ", q_in.scalar_type());
  TORCH_CHECK(q_in.dim() == 3, "hstu_kernels: q must be [C, H, D], got ", q_in.sizes());
  const int64_t C = q_in.size(0), H = q_in.size(1), D = q_in.size(2);
  TORCH_CHECK(head_dim_built(D), "hstu_kernels: head dim ", D, " is not built into this extension");
  TORCH_CHECK(C < (int64_t(1) << 31) && k_cache_in.size(0) < (int64_t(1) << 31), "hstu_kernels: too many rows");
  TORCH_CHECK(max_seq_len >= 1 && max_attn_len >= 0, "hstu_kernels: max_seq_len >= 1 and max_attn_len >= 0");
  const at::Tensor q = rows_tensor(q_in, "q", q_in, H, D);
  const at::Tensor k = rows_tensor(k_in, "k", q_in, H, D);
  const at::Tensor v = rows_tensor(v_in, "v", q_in, H, D);
  const at::Tensor kc = rows_tensor(k_cache_in, "k_cache", q_in, H, D);
  const at::Tensor vc = rows_tensor(v_cache_in, "v_cache", q_in, H, D);
  TORCH_CHECK(k.size(0) == C && v.size(0) == C, "hstu_kernels: q, k, v must have the same rows");
  TORCH_CHECK(vc.size(0) == kc.size(0), "hstu_kernels: k_cache and v_cache must have the same rows");
  const at::Tensor cand = int_vector(cand_offsets, "cand_offsets", q_in, at::kInt, -1);
  const int64_t B = cand.size(0) - 1;
  TORCH_CHECK(B >= 0, "hstu_kernels: cand_offsets needs B + 1 >= 1 entries");
  TORCH_CHECK(B * H < (int64_t(1) << 31), "hstu_kernels: B * H must stay below 2^31");
  const at::Tensor cache = int_vector(cache_offsets, "cache_offsets", q_in, at::kInt, B + 1);
  const int64_t most = max_cands >= 0 ? max_cands : longest(cand);
  TORCH_CHECK(most / 16 < 65535, "hstu_kernels: too many candidates per user for the grid (", most, ")");

  hstu::CachedFwdParams p;
  std::vector<at::Tensor> keep;
  at::Tensor ts, qts, cts;
  if (time_weight.has_value()) {
    TORCH_CHECK(timestamps.has_value() && cache_timestamps.has_value(),
                "hstu_kernels: time_weight needs timestamps and cache_timestamps");
    ts = int_vector(*timestamps, "timestamps", q_in, at::kLong, C);
    qts = query_timestamps.has_value() ? int_vector(*query_timestamps, "query_timestamps", q_in, at::kLong, C) : ts;
    cts = int_vector(*cache_timestamps, "cache_timestamps", q_in, at::kLong, kc.size(0));
    p.timestamps = ts.data_ptr<int64_t>();
    p.query_timestamps = qts.data_ptr<int64_t>();
    p.cache_timestamps = cts.data_ptr<int64_t>();
  }
  fill_bias(p.bias, max_seq_len, H, pos_weight, time_weight, time_boundaries, q_in, keep);
  at::Tensor out = at::empty({C, H, D}, q_in.options());
  if (C == 0 || B == 0 || most == 0) return out.zero_();

  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.k_cache = kc.data_ptr();
  p.v_cache = vc.data_ptr();
  p.out = out.data_ptr();
  p.q_row_stride = q.stride(0);
  p.q_head_stride = q.stride(1);
  p.k_row_stride = k.stride(0);
  p.k_head_stride = k.stride(1);
  p.v_row_stride = v.stride(0);
  p.v_head_stride = v.stride(1);
  p.kc_row_stride = kc.stride(0);
  p.kc_head_stride = kc.stride(1);
  p.vc_row_stride = vc.stride(0);
  p.vc_head_stride = vc.stride(1);
  p.o_row_stride = out.stride(0);
  p.o_head_stride = out.stride(1);
  p.cand_offsets = cand.data_ptr<int32_t>();
  p.cache_offsets = cache.data_ptr<int32_t>();
  p.batch = static_cast<int>(B);
  p.num_heads = static_cast<int>(H);
  p.head_dim = static_cast<int>(D);
  p.max_cands = static_cast<int>(most);
  p.max_attn_len = static_cast<int>(max_attn_len);
  p.alpha = static_cast<float>(alpha);
  p.scale = static_cast<float>(scale);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cudaError_t err = q.scalar_type() == at::kBFloat16 ? dispatch_cached<hstu::bf16>(D, p, stream)
                                                           : dispatch_cached<hstu::fp16>(D, p, stream);
  check_launch(err, "hstu cached attention");
  return out;
}

}  // namespace hstu_torch
