// the dispatch functions the torch launchers call, declared without their kernels: each is defined (explicitly
// instantiated) by one file of csrc/instantiations/, which is the only place the kernel templates compile.
#pragma once

#include "arch/launch.h"
#include "numeric.h"
#include "params.h"

namespace hstu {

template <typename Element, int kHeadDim>
arch::LaunchStatus run_attention_fwd(const AttentionFwdParams& p, arch::Stream stream);

// the sm_90a forward (wgmma / TMA); total_rows: the rows of q, k, v (what the TMA descriptors span). defined
// only when the extension is built for sm_90a (HSTU_SM90)
template <typename Element, int kHeadDim>
arch::LaunchStatus run_attention_fwd_sm90(const AttentionFwdParams& p, int64_t total_rows, arch::Stream stream);

template <typename Element, int kHeadDim>
arch::LaunchStatus run_attention_bwd(const AttentionBwdParams& p, arch::Stream stream);

template <typename Element, int kHeadDim>
arch::LaunchStatus run_cached_attention_fwd(const CachedFwdParams& p, arch::Stream stream);

}  // namespace hstu
