// host-side dispatch of the sm_90a forward kernel: TMA descriptors of q, k and v, the compile-time variant for the
// bias flags, the launch. run_attention_fwd_sm90<Element, D> is instantiated once per (dtype, head dim) by the
// *_sm90.cu files of csrc/instantiations/, compiled for sm_90a only.
#pragma once

#include "api.h"
#include "arch/launch.h"
#include "arch/tma_host.h"
#include "attention_fwd_sm90.cuh"
#include "params_sm90.h"
#include "static_switch.h"

namespace hstu {

template <typename Element, int kHeadDim>
arch::LaunchStatus run_attention_fwd_sm90(const AttentionFwdParams& p, int64_t total_rows, arch::Stream stream) {
  using Config = FwdSm90Config<kHeadDim>;
  constexpr int kBlockM = AttentionFwdSm90Kernel<Element, kHeadDim, Config::kBlockN, Config::kStages, false,
                                                 false>::kBlockM;
  const arch::Dim3 grid{static_cast<unsigned>(p.batch * p.num_heads),
                        static_cast<unsigned>(ceil_div(p.max_len, kBlockM)), 1u};
  if (grid.x == 0 || grid.y == 0 || total_rows == 0) return arch::kLaunchOk;
  AttentionFwdSm90Params params;
  params.fwd = p;
  // a layout the driver's tensor maps refuse (a zero or odd stride, say) runs the sm80 forward instead
  const bool mapped =
      arch::encode_rows_map<Element>(&params.tma_q, p.q, total_rows, p.num_heads, kHeadDim, p.q_row_stride,
                                     p.q_head_stride, kBlockM) == arch::kLaunchOk &&
      arch::encode_rows_map<Element>(&params.tma_k, p.k, total_rows, p.num_heads, kHeadDim, p.k_row_stride,
                                     p.k_head_stride, Config::kBlockN) == arch::kLaunchOk &&
      arch::encode_rows_map<Element>(&params.tma_v, p.v, total_rows, p.num_heads, kHeadDim, p.v_row_stride,
                                     p.v_head_stride, Config::kBlockN) == arch::kLaunchOk;
  if (!mapped) return run_attention_fwd<Element, kHeadDim>(p, stream);
  return HSTU_BOOL_SWITCH(p.bias.pos_weight != nullptr, kHasPos, [&] {
    return HSTU_BOOL_SWITCH(p.bias.time_weight != nullptr, kHasTime, [&] {
      using Kernel = AttentionFwdSm90Kernel<Element, kHeadDim, Config::kBlockN, Config::kStages, kHasPos, kHasTime>;
      return arch::launch_kernel_grid_constant<Kernel>(grid, params, stream);
    });
  });
}

}  // namespace hstu
