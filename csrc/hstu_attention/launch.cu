// torch launchers of hstu attention: check the tensors, fill the kernel params, dispatch on dtype and head dim.
// the meaning of the op: hstu_kernels/ops/hstu_attention/naive.py; the kernels: csrc/include/hstu/.
#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>

#include "../torch_common.h"
#include "hstu/api.h"
#include "hstu/host/workspace.h"

namespace hstu_torch {

namespace {

struct Inputs {
  at::Tensor q, k, v, offsets, targets, ts, qts;
  std::vector<at::Tensor> keep;
  int64_t L = 0, H = 0, D = 0, B = 0, max_len = 0;
};

// checks shared by the forward and the backward; fills the forward part of the params
Inputs prepare(hstu::AttentionFwdParams& p, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
               const at::Tensor& seq_offsets, int64_t max_seq_len, int64_t max_len, double alpha, double scale,
               const OptTensor& timestamps, const OptTensor& query_timestamps, const OptTensor& pos_weight,
               const OptTensor& time_weight, const OptTensor& time_boundaries, const OptTensor& num_targets,
               int64_t max_attn_len) {
  Inputs in;
  TORCH_CHECK(q_in.is_cuda(), "hstu_kernels: q must be a CUDA tensor");
  TORCH_CHECK(q_in.scalar_type() == at::kBFloat16 || q_in.scalar_type() == at::kHalf,
              "hstu_kernels: the CUDA backend takes bfloat16 or float16, got ", q_in.scalar_type());
  TORCH_CHECK(q_in.dim() == 3, "hstu_kernels: q must be [L, H, D], got ", q_in.sizes());
  in.L = q_in.size(0);
  in.H = q_in.size(1);
  in.D = q_in.size(2);
  TORCH_CHECK(head_dim_built(in.D), "hstu_kernels: head dim ", in.D, " is not built into this extension");
  TORCH_CHECK(v_in.dim() == 3 && v_in.size(2) == in.D, "hstu_kernels: the CUDA backend needs Dv == Dqk");
  TORCH_CHECK(in.L < (int64_t(1) << 31), "hstu_kernels: more than 2^31 - 1 tokens");
  TORCH_CHECK(max_seq_len >= 1 && max_attn_len >= 0, "hstu_kernels: max_seq_len >= 1 and max_attn_len >= 0");
  in.q = rows_tensor(q_in, "q", q_in, in.H, in.D);
  in.k = rows_tensor(k_in, "k", q_in, in.H, in.D);
  in.v = rows_tensor(v_in, "v", q_in, in.H, in.D);
  TORCH_CHECK(in.k.size(0) == in.L && in.v.size(0) == in.L, "hstu_kernels: q, k, v must have the same rows");
  in.offsets = int_vector(seq_offsets, "seq_offsets", q_in, at::kInt, -1);
  in.B = in.offsets.size(0) - 1;
  TORCH_CHECK(in.B >= 0, "hstu_kernels: seq_offsets needs B + 1 >= 1 entries");
  TORCH_CHECK(in.B * in.H < (int64_t(1) << 31), "hstu_kernels: B * H must stay below 2^31");
  in.max_len = max_len >= 0 ? max_len : longest(in.offsets);
  TORCH_CHECK(in.max_len / 16 < 65535, "hstu_kernels: sequences too long for the grid (", in.max_len, ")");
  if (num_targets.has_value()) in.targets = int_vector(*num_targets, "num_targets", q_in, at::kInt, in.B);
  if (time_weight.has_value()) {
    TORCH_CHECK(timestamps.has_value(), "hstu_kernels: time_weight needs timestamps");
    in.ts = int_vector(*timestamps, "timestamps", q_in, at::kLong, in.L);
    in.qts = query_timestamps.has_value() ? int_vector(*query_timestamps, "query_timestamps", q_in, at::kLong, in.L)
                                          : in.ts;
  }

  p.q = in.q.data_ptr();
  p.k = in.k.data_ptr();
  p.v = in.v.data_ptr();
  p.q_row_stride = in.q.stride(0);
  p.q_head_stride = in.q.stride(1);
  p.k_row_stride = in.k.stride(0);
  p.k_head_stride = in.k.stride(1);
  p.v_row_stride = in.v.stride(0);
  p.v_head_stride = in.v.stride(1);
  p.seq_offsets = in.offsets.data_ptr<int32_t>();
  p.num_targets = in.targets.defined() ? in.targets.data_ptr<int32_t>() : nullptr;
  p.timestamps = in.ts.defined() ? in.ts.data_ptr<int64_t>() : nullptr;
  p.query_timestamps = in.qts.defined() ? in.qts.data_ptr<int64_t>() : nullptr;
  fill_bias(p.bias, max_seq_len, in.H, pos_weight, time_weight, time_boundaries, q_in, in.keep);
  p.batch = static_cast<int>(in.B);
  p.num_heads = static_cast<int>(in.H);
  p.head_dim = static_cast<int>(in.D);
  p.max_len = static_cast<int>(in.max_len);
  p.max_attn_len = static_cast<int>(max_attn_len);
  p.alpha = static_cast<float>(alpha);
  p.scale = static_cast<float>(scale);
  return in;
}

template <typename Element>
cudaError_t dispatch_fwd(int64_t d, const hstu::AttentionFwdParams& p, cudaStream_t s) {
  switch (d) {
#ifdef HSTU_HDIM_64
    case 64:
      return hstu::run_attention_fwd<Element, 64>(p, s);
#endif
#ifdef HSTU_HDIM_128
    case 128:
      return hstu::run_attention_fwd<Element, 128>(p, s);
#endif
    default:
      return cudaErrorInvalidValue;
  }
}

// the sm_90a forward (wgmma / TMA) runs on compute capability 9.0 when it is built; HSTU_CUDA_SM90=0 in the
// environment keeps the sm80 kernels (read per call, so tests and benchmarks can compare the two)
bool use_sm90_fwd(const at::Tensor& q) {
#ifdef HSTU_SM90
  const char* env = std::getenv("HSTU_CUDA_SM90");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, q.device().index());
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, q.device().index());
  return major == 9 && minor == 0;
#else
  (void)q;
  return false;
#endif
}

template <typename Element>
cudaError_t dispatch_fwd_sm90(int64_t d, const hstu::AttentionFwdParams& p, int64_t rows, cudaStream_t s) {
#ifdef HSTU_SM90
  switch (d) {
#ifdef HSTU_HDIM_64
    case 64:
      return hstu::run_attention_fwd_sm90<Element, 64>(p, rows, s);
#endif
#ifdef HSTU_HDIM_128
    case 128:
      return hstu::run_attention_fwd_sm90<Element, 128>(p, rows, s);
#endif
    default:
      break;
  }
#else
  (void)d, (void)p, (void)rows, (void)s;
#endif
  return cudaErrorInvalidValue;
}

template <typename Element>
cudaError_t dispatch_bwd(int64_t d, const hstu::AttentionBwdParams& p, cudaStream_t s) {
  switch (d) {
#ifdef HSTU_HDIM_64
    case 64:
      return hstu::run_attention_bwd<Element, 64>(p, s);
#endif
#ifdef HSTU_HDIM_128
    case 128:
      return hstu::run_attention_bwd<Element, 128>(p, s);
#endif
    default:
      return cudaErrorInvalidValue;
  }
}

hstu::BwdWorkspace workspace(int64_t d, const hstu::AttentionBwdParams& p, int64_t total_len) {
  return d <= 64 ? hstu::bwd_workspace<64>(p, total_len) : hstu::bwd_workspace<128>(p, total_len);
}

}  // namespace

std::vector<int64_t> built_head_dims() {
  std::vector<int64_t> dims;
#ifdef HSTU_HDIM_64
  dims.push_back(64);
#endif
#ifdef HSTU_HDIM_128
  dims.push_back(128);
#endif
  return dims;
}

std::vector<std::string> kernel_families() {
#ifdef HSTU_SM90
  return {"sm80", "sm90"};
#else
  return {"sm80"};
#endif
}

at::Tensor attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& seq_offsets,
                         int64_t max_seq_len, int64_t max_len, double alpha, double scale, const OptTensor& timestamps,
                         const OptTensor& query_timestamps, const OptTensor& pos_weight, const OptTensor& time_weight,
                         const OptTensor& time_boundaries, const OptTensor& num_targets, int64_t max_attn_len) {
  const c10::cuda::CUDAGuard guard(q.device());
  hstu::AttentionFwdParams p;
  Inputs in = prepare(p, q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps,
                      pos_weight, time_weight, time_boundaries, num_targets, max_attn_len);
  at::Tensor out = at::empty({in.L, in.H, in.D}, q.options());
  if (in.L == 0 || in.B == 0 || in.max_len == 0) return out.zero_();
  p.out = out.data_ptr();
  p.o_row_stride = out.stride(0);
  p.o_head_stride = out.stride(1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  const cudaError_t err =
      use_sm90_fwd(q) ? (bf16 ? dispatch_fwd_sm90<hstu::bf16>(in.D, p, in.L, stream)
                              : dispatch_fwd_sm90<hstu::fp16>(in.D, p, in.L, stream))
                      : (bf16 ? dispatch_fwd<hstu::bf16>(in.D, p, stream) : dispatch_fwd<hstu::fp16>(in.D, p, stream));
  check_launch(err, "hstu attention forward");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_bwd(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& seq_offsets, int64_t max_seq_len, int64_t max_len, double alpha, double scale,
    const OptTensor& timestamps, const OptTensor& query_timestamps, const OptTensor& pos_weight,
    const OptTensor& time_weight, const OptTensor& time_boundaries, const OptTensor& num_targets,
    int64_t max_attn_len, bool need_dpw, bool need_dtw, bool deterministic) {
  const c10::cuda::CUDAGuard guard(q.device());
  hstu::AttentionBwdParams p;
  Inputs in = prepare(p, q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps,
                      pos_weight, time_weight, time_boundaries, num_targets, max_attn_len);
  const at::Tensor dout = rows_tensor(grad_out, "grad_out", q, in.H, in.D);
  TORCH_CHECK(dout.size(0) == in.L, "hstu_kernels: grad_out must have q's shape");
  p.dout = dout.data_ptr();
  p.do_row_stride = dout.stride(0);
  p.do_head_stride = dout.stride(1);
  p.deterministic = deterministic;
  p.compute_dpos = pos_weight.has_value() && need_dpw;
  p.compute_dtime = time_weight.has_value() && need_dtw;

  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor dk = at::empty({in.L, in.H, in.D}, q.options());
  at::Tensor dv = at::empty({in.L, in.H, in.D}, q.options());
  at::Tensor dq, dq_accum;
  if (deterministic) {
    dq = at::empty({in.L, in.H, in.D}, q.options());
    p.dq = dq.data_ptr();
    p.dq_row_stride = dq.stride(0);
    p.dq_head_stride = dq.stride(1);
  } else {
    dq_accum = at::zeros({in.L, in.H, in.D}, f32);
    p.dq_accum = dq_accum.data_ptr<float>();
    p.dq_accum_row_stride = dq_accum.stride(0);
    p.dq_accum_head_stride = dq_accum.stride(1);
  }
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.dk_row_stride = dk.stride(0);
  p.dk_head_stride = dk.stride(1);
  p.dv_row_stride = dv.stride(0);
  p.dv_head_stride = dv.stride(1);
  at::Tensor dpw, dtw, dpos_partial, dtime_partial;
  if (p.compute_dpos) {
    dpw = at::zeros(pos_weight->sizes(), f32);
    p.dpos_weight = dpw.data_ptr<float>();
    p.dpos_head_stride = pos_weight->size(0) > 1 ? dpw.stride(0) : 0;
  }
  if (p.compute_dtime) {
    dtw = at::zeros(time_weight->sizes(), f32);
    p.dtime_weight = dtw.data_ptr<float>();
    p.dtime_head_stride = time_weight->size(0) > 1 ? dtw.stride(0) : 0;
  }
  const hstu::BwdWorkspace ws = workspace(in.D, p, in.L);
  p.num_slots = ws.num_slots;
  p.pos_partial_width = ws.pos_partial_width;
  if (ws.dpos_partial_floats > 0) {
    dpos_partial = at::zeros({static_cast<int64_t>(ws.dpos_partial_floats)}, f32);
    p.dpos_partial = dpos_partial.data_ptr<float>();
  }
  if (ws.dtime_partial_floats > 0) {
    dtime_partial = at::zeros({static_cast<int64_t>(ws.dtime_partial_floats)}, f32);
    p.dtime_partial = dtime_partial.data_ptr<float>();
  }

  if (in.L > 0 && in.B > 0 && in.max_len > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const cudaError_t err = q.scalar_type() == at::kBFloat16 ? dispatch_bwd<hstu::bf16>(in.D, p, stream)
                                                             : dispatch_bwd<hstu::fp16>(in.D, p, stream);
    check_launch(err, "hstu attention backward");
  } else {
    dk.zero_();
    dv.zero_();
    if (dq.defined()) dq.zero_();
  }
  if (!deterministic) dq = dq_accum.to(q.scalar_type());
  const at::Tensor empty = at::empty({0}, f32);
  return {dq, dk, dv, p.compute_dpos ? dpw.to(pos_weight->scalar_type()) : empty,
          p.compute_dtime ? dtw.to(time_weight->scalar_type()) : empty.clone()};
}

}  // namespace hstu_torch
