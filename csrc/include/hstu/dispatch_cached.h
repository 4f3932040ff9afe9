// host-side dispatch of the cached (m-falcon) scoring kernel. run_cached_attention_fwd<Element, D> is
// instantiated once per (dtype, head dim) by csrc/instantiations/.
#pragma once

#include "arch/launch.h"
#include "cached_fwd.cuh"
#include "kernel_configs.h"
#include "params.h"
#include "static_switch.h"

namespace hstu {

template <typename Element, int kHeadDim>
arch::LaunchStatus run_cached_attention_fwd(const CachedFwdParams& p, arch::Stream stream) {
  return HSTU_BOOL_SWITCH(p.bias.pos_weight != nullptr, kHasPos, [&] {
    return HSTU_BOOL_SWITCH(p.bias.time_weight != nullptr, kHasTime, [&] {
      using Config = CachedConfig<kHeadDim>;
      using Kernel = CachedFwdKernel<Element, kHeadDim, Config::kBlockN, Config::kNWarps, kHasPos, kHasTime>;
      const arch::Dim3 grid{static_cast<unsigned>(p.batch * p.num_heads),
                            static_cast<unsigned>(ceil_div(p.max_cands, Kernel::kBlockM)), 1u};
      return arch::launch_kernel<Kernel>(grid, p, stream);
    });
  });
}

}  // namespace hstu
