// host-side dispatch of the backward: the dk/dv kernel (with dq atomics unless deterministic), and in
// deterministic mode the dq kernel and the slot reductions of the table gradients. run_attention_bwd<Element, D>
// is instantiated once per (dtype, head dim) by csrc/instantiations/.
//
// the caller (csrc/hstu_attention/launch.cu, or the host emulation driver) has zeroed dq_accum, the table
// gradients and the partial-sum slots, and casts dq_accum to the input dtype afterwards.
#pragma once

#include "arch/launch.h"
#include "attention_bwd.cuh"
#include "host/workspace.h"
#include "kernel_configs.h"
#include "params.h"
#include "static_switch.h"

namespace hstu {

inline arch::LaunchStatus reduce_slots(const float* partial, int partial_stride, float* out, int64_t out_head_stride,
                                       int out_offset, int width, int table_heads, const AttentionBwdParams& p,
                                       arch::Stream stream) {
  ReduceSlotsParams r;
  r.partial = partial;
  r.out = out;
  r.out_head_stride = out_head_stride;
  r.out_offset = out_offset;
  r.width = width;
  r.partial_stride = partial_stride;
  r.num_slots = p.num_slots;
  r.num_heads = p.num_heads;
  r.shared_table = table_heads == 1;
  const arch::Dim3 grid{static_cast<unsigned>(ceil_div(width, ReduceSlotsKernel::kNThreads)),
                        static_cast<unsigned>(table_heads), 1u};
  return arch::launch_kernel<ReduceSlotsKernel>(grid, r, stream);
}

template <typename Element, int kHeadDim>
arch::LaunchStatus run_attention_bwd(const AttentionBwdParams& p, arch::Stream stream) {
  return HSTU_BOOL_SWITCH(p.bias.pos_weight != nullptr, kHasPos, [&] {
    return HSTU_BOOL_SWITCH(p.bias.time_weight != nullptr, kHasTime, [&] {
      using Config = BwdConfig<kHeadDim, kHasTime>;
      using Kernel = AttentionBwdKernel<Element, kHeadDim, Config::kBlockM, Config::kNWarps, kHasPos, kHasTime>;
      const arch::Dim3 grid{static_cast<unsigned>(p.batch * p.num_heads),
                            static_cast<unsigned>(ceil_div(p.max_len, Kernel::kBlockN)), 1u};
      arch::LaunchStatus s = arch::launch_kernel<Kernel>(grid, p, stream);
      if (s != arch::kLaunchOk || !p.deterministic) return s;

      using DqC = DqConfig<kHeadDim>;
      using Dq = AttentionDqKernel<Element, kHeadDim, DqC::kBlockN, DqC::kNWarps, kHasPos, kHasTime>;
      const arch::Dim3 dq_grid{static_cast<unsigned>(p.batch * p.num_heads),
                               static_cast<unsigned>(ceil_div(p.max_len, Dq::kBlockM)), 1u};
      s = arch::launch_kernel<Dq>(dq_grid, p, stream);
      if (s != arch::kLaunchOk) return s;
      const int pos_heads = p.dpos_head_stride == 0 ? 1 : p.num_heads;
      const int time_heads = p.dtime_head_stride == 0 ? 1 : p.num_heads;
      if (kHasPos && p.compute_dpos) {
        s = reduce_slots(p.dpos_partial, p.pos_partial_width, p.dpos_weight, p.dpos_head_stride, p.bias.max_seq_len - 1, p.pos_partial_width,
                         pos_heads, p, stream);
        if (s != arch::kLaunchOk) return s;
      }
      if (kHasTime && p.compute_dtime)
        s = reduce_slots(p.dtime_partial, kMaxBuckets, p.dtime_weight, p.dtime_head_stride, 0, p.bias.num_boundaries + 1, time_heads,
                         p, stream);
      return s;
    });
  });
}

}  // namespace hstu
