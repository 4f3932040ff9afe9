// the dispatch functions the torch launchers call, declared without their kernels: each is defined (explicitly
// instantiated) by one file of csrc/instantiations/, which is the only place the kernel templates compile.
#pragma once

#include "arch/launch.h"
#include "numeric.h"
#include "params.h"

namespace hstu {

template <typename Element, int kHeadDim>
arch::LaunchStatus run_attention_fwd(const AttentionFwdParams& p, arch::Stream stream);

template <typename Element, int kHeadDim>
arch::LaunchStatus run_attention_bwd(const AttentionBwdParams& p, arch::Stream stream);

template <typename Element, int kHeadDim>
arch::LaunchStatus run_cached_attention_fwd(const CachedFwdParams& p, arch::Stream stream);

}  // namespace hstu
