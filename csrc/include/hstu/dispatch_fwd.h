// host-side dispatch of the forward kernel: picks the compile-time variant for the bias flags and launches.
// run_attention_fwd<Element, D> is instantiated once per (dtype, head dim) by csrc/instantiations/.
#pragma once

#include "arch/launch.h"
#include "attention_fwd.cuh"
#include "kernel_configs.h"
#include "params.h"
#include "static_switch.h"

namespace hstu {

template <typename Element, int kHeadDim>
arch::LaunchStatus run_attention_fwd(const AttentionFwdParams& p, arch::Stream stream) {
  return HSTU_BOOL_SWITCH(p.bias.pos_weight != nullptr, kHasPos, [&] {
    return HSTU_BOOL_SWITCH(p.bias.time_weight != nullptr, kHasTime, [&] {
      using Config = FwdConfig<kHeadDim>;
      using Kernel = AttentionFwdKernel<Element, kHeadDim, Config::kBlockN, Config::kNWarps, kHasPos, kHasTime>;
      const arch::Dim3 grid{static_cast<unsigned>(p.batch * p.num_heads),
                            static_cast<unsigned>(ceil_div(p.max_len, Kernel::kBlockM)), 1u};
      return arch::launch_kernel<Kernel>(grid, p, stream);
    });
  });
}

}  // namespace hstu
