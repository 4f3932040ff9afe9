// hstu_kernels._C: the op schemas (so torch.compile and torch.library see the ops), their CUDA implementations,
// and a small python module for build information. fake (meta) kernels and autograd are registered in python
// beside them: hstu_kernels/ops/<op>/cuda_impl.py.
//
// names carry a cuda_ prefix: the triton backend's custom ops live in the same hstu_kernels namespace.
#include <torch/extension.h>
#include <torch/library.h>

#include "torch_ops.h"

// schema strings, one per line between the markers (tests/ops/test_cuda_python.py reads them from this file)
// schemas-begin
#define HSTU_SCHEMA_ATTENTION_FWD                                                                                  \
  "cuda_hstu_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor seq_offsets, int max_seq_len, int max_len, "      \
  "float alpha, float scale, Tensor? timestamps, Tensor? query_timestamps, Tensor? pos_weight, "                 \
  "Tensor? time_weight, Tensor? time_boundaries, Tensor? num_targets, int max_attn_len) -> Tensor"
#define HSTU_SCHEMA_ATTENTION_BWD                                                                                  \
  "cuda_hstu_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor seq_offsets, int max_seq_len, "  \
  "int max_len, float alpha, float scale, Tensor? timestamps, Tensor? query_timestamps, Tensor? pos_weight, "     \
  "Tensor? time_weight, Tensor? time_boundaries, Tensor? num_targets, int max_attn_len, bool need_dpw, "          \
  "bool need_dtw, bool deterministic) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
#define HSTU_SCHEMA_CACHED_FWD                                                                                     \
  "cuda_hstu_cached_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor cand_offsets, Tensor k_cache, "            \
  "Tensor v_cache, Tensor cache_offsets, int max_seq_len, int max_cands, float alpha, float scale, "              \
  "Tensor? timestamps, Tensor? query_timestamps, Tensor? cache_timestamps, Tensor? pos_weight, "                  \
  "Tensor? time_weight, Tensor? time_boundaries, int max_attn_len) -> Tensor"
// schemas-end

TORCH_LIBRARY(hstu_kernels, m) {
  m.def(HSTU_SCHEMA_ATTENTION_FWD);
  m.def(HSTU_SCHEMA_ATTENTION_BWD);
  m.def(HSTU_SCHEMA_CACHED_FWD);
}

TORCH_LIBRARY_IMPL(hstu_kernels, CUDA, m) {
  m.impl("cuda_hstu_attention_fwd", TORCH_FN(hstu_torch::attention_fwd));
  m.impl("cuda_hstu_attention_bwd", TORCH_FN(hstu_torch::attention_bwd));
  m.impl("cuda_hstu_cached_attention_fwd", TORCH_FN(hstu_torch::cached_attention_fwd));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "HSTU attention CUDA kernels (ops registered under torch.ops.hstu_kernels.cuda_*)";
  m.def("built_head_dims", &hstu_torch::built_head_dims, "head dims compiled into this build");
  m.def("kernel_families", &hstu_torch::kernel_families,
        "kernel families compiled into this build: sm80 (mma.sync), sm90 (wgmma / TMA forward, sm_90a)");
}
