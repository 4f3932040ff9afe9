// host emulation of arch/sm90.cuh (HSTU_HOST_EMULATION): the sm_90a kernels run on the CPU emulator of one CTA
// (emulation.h), so their pipeline, masks, bias staging and fragment bookkeeping are tested without a GPU.
//
// modelled from the PTX ISA's descriptions, not from hardware:
//   - mbarriers: arrival counts, TMA transaction bytes, phases; try_wait.parity blocks the fiber until the phase
//     with that parity has completed (a phase that never completes is reported as a deadlock);
//   - TMA tile loads: the box is copied when issued (rows past the tensor read as zeros), into the 128-byte
//     swizzle layout (16-byte chunk c of a 128-byte row at shared address A stored at chunk c ^ ((A >> 7) & 7)),
//     and its bytes complete on the mbarrier;
//   - wgmma m64nNk16: all 128 threads of the warpgroup meet; operands are read through the shared-memory
//     descriptors (start, LBO, SBO, 128-byte swizzle applied to the address) or from the registers' A fragments;
//     products exact, sums in double, rounded to fp32. commit / wait are no-ops (the product is done at issue);
//   - setmaxnreg, fences (including fence.proxy.async: one proxy here), tensor-map prefetch: no-ops.
// the same caveats as emulation.h: no races, no timing; and this models the documented layouts, so a
// misreading of the PTX ISA shared by the kernel and this file would pass here and fail on the GPU tier.
#pragma once

#include <cstring>
#include <vector>

#include "../numeric.h"
#include "sm90_desc.h"
#include "../params_sm90.h"
#include "emulation.h"

namespace hstu {
namespace arch {
namespace sm90 {

// what an emulated TensorMap holds (inside its 128 opaque bytes): filled by tma_host.h's emulated encoder
struct EmuTensorMap {
  const char* base;
  int64_t dims[3];  // elements: head dim, heads, rows
  int64_t strides[2];  // bytes: head, row
  int box[3];
  int elem_bytes;
};
static_assert(sizeof(EmuTensorMap) <= sizeof(TensorMap), "");

inline uint32_t smem_addr(const void* p) {
  emu::Block& b = emu::block();
  return static_cast<uint32_t>(static_cast<const char*>(p) - b.smem);
}

inline char* smem_ptr(uint32_t addr) { return emu::block().smem + addr; }

// ---- mbarriers ----

inline emu::Mbarrier& mbar(uint64_t* bar) {
  emu::Block& b = emu::block();
  emu::Mbarrier* m = emu::find_mbarrier(b, bar);
  if (m == nullptr) emu::fail("mbarrier at shared offset %u used before mbarrier.init", smem_addr(bar));
  return *m;
}

inline void mbar_complete_if_done(emu::Mbarrier& m) {
  if (m.pending == 0 && m.tx == 0) {
    ++m.phase;
    m.pending = m.expected;
  }
}

inline void mbar_init(uint64_t* bar, uint32_t count) {
  emu::check_smem(bar, 8, 8, "mbarrier");
  emu::Block& b = emu::block();
  if (emu::find_mbarrier(b, bar) != nullptr) emu::fail("mbarrier at shared offset %u initialised twice", smem_addr(bar));
  emu::Mbarrier m;
  m.addr = bar;
  m.expected = m.pending = static_cast<int>(count);
  b.mbarriers.push_back(m);
}

inline void fence_barrier_init() {}

inline void mbar_arrive(uint64_t* bar) {
  emu::Mbarrier& m = mbar(bar);
  if (m.pending <= 0) emu::fail("mbarrier at shared offset %u: more arrivals than its count", smem_addr(bar));
  --m.pending;
  mbar_complete_if_done(m);
}

inline void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  mbar(bar).tx += bytes;
  mbar_arrive(bar);
}

inline void mbar_wait(uint64_t* bar, uint32_t parity) {
  emu::Block& b = emu::block();
  mbar(bar);
  while (!emu::mbarrier_phase_done(b, bar, parity)) {
    emu::Thread& th = b.threads[emu::current_thread()];
    th.waiting = 3;
    th.wait_bar = bar;
    th.wait_parity = parity;
    emu::yield_to_scheduler();
  }
}

inline void fence_proxy_async() {}

inline void store_zero16(void* smem) {
  emu::check_smem(smem, 16, 16, "st.shared.v4");
  std::memset(smem, 0, 16);
}

// ---- TMA ----

inline void tma_load_3d(void* smem, const void* tensor_map, uint64_t* bar, int c0, int c1, int c2) {
  EmuTensorMap map;
  std::memcpy(&map, tensor_map, sizeof(map));
  const int row_bytes = map.box[0] * map.elem_bytes;
  if (row_bytes != 128) emu::fail("TMA box rows of %d bytes: the 128-byte swizzle needs 128", row_bytes);
  const int rows = map.box[1] * map.box[2];
  emu::check_smem(smem, static_cast<size_t>(rows) * 128, 128, "TMA destination");
  const uint32_t dst = smem_addr(smem);
  for (int r1 = 0; r1 < map.box[1]; ++r1) {
    for (int r2 = 0; r2 < map.box[2]; ++r2) {
      const int row = r2 * map.box[1] + r1;  // dim 0 innermost, then dim 1, then dim 2
      const int64_t h = c1 + r1, g = c2 + r2;
      for (int chunk = 0; chunk < 8; ++chunk) {
        const uint32_t line = dst + static_cast<uint32_t>(row) * 128;
        char* out = smem_ptr(line + ((chunk ^ ((line >> 7) & 7)) * 16));
        for (int e = 0; e < 16 / map.elem_bytes; ++e) {
          const int64_t x = c0 + chunk * (16 / map.elem_bytes) + e;
          char* o = out + e * map.elem_bytes;
          if (x < 0 || x >= map.dims[0] || h < 0 || h >= map.dims[1] || g < 0 || g >= map.dims[2]) {
            std::memset(o, 0, map.elem_bytes);
            continue;
          }
          const char* src = map.base + g * map.strides[1] + h * map.strides[0] + x * map.elem_bytes;
          emu::check_global(src, map.elem_bytes, false, "TMA source");
          std::memcpy(o, src, map.elem_bytes);
        }
      }
    }
  }
  emu::Mbarrier& m = mbar(bar);
  m.tx -= static_cast<long long>(rows) * 128;
  mbar_complete_if_done(m);
}

inline void prefetch_tensor_map(const void*) {}

// ---- registers and barriers ----

template <int kRegs>
inline void regs_dealloc() {}
template <int kRegs>
inline void regs_alloc() {}

// ---- wgmma ----

inline void wgmma_fence() {}
inline void wgmma_commit() {}
template <int N>
inline void wgmma_wait() {}
template <int N>
inline void fence_operands(float (&)[N]) {}

inline uint64_t desc_sw128(const void* smem, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return desc_sw128_bits(smem_addr(smem), lbo_bytes, sbo_bytes);
}

// the 16-bit element at (mn, k) of an operand read through a descriptor: K-major (k contiguous) or MN-major
inline uint16_t desc_element(uint64_t desc, int mn, int k, bool mn_major) {
  if ((desc >> 62) != 1) emu::fail("wgmma descriptor: only the 128-byte swizzle is emulated");
  if (((desc >> 49) & 7) != 0) emu::fail("wgmma descriptor: a base offset other than 0 is not emulated");
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
  const uint32_t lbo = static_cast<uint32_t>((desc >> 16) & 0x3FFF) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
  uint32_t addr;
  if (!mn_major) {
    // 8-row atoms of 128-byte rows, SBO between atoms; k inside the row
    addr = start + (mn / 8) * sbo + (mn % 8) * 128 + k * 2;
  } else {
    // 64-element blocks of mn at LBO, 8-row atoms of k at SBO
    addr = start + (mn / 64) * lbo + (mn % 64) * 2 + (k / 8) * sbo + (k % 8) * 128;
  }
  addr ^= ((addr >> 7) & 7) << 4;
  const char* p = smem_ptr(addr);
  emu::check_smem(p, 2, 2, "wgmma operand");
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

struct WgmmaPayload {
  const uint32_t* a;  // registers (null: a from desc_a)
  uint64_t desc_a, desc_b;
  float* d;
  bool accumulate;
  int n;
  bool trans_b;
};

template <typename Element>
inline void wgmma_exec(WgmmaPayload* const* th) {
  const int n = th[0]->n;
  std::vector<double> A(64 * 16), B(16 * n);
  auto value = [](uint16_t bits) { return static_cast<double>(arch::to_float<Element>(bits)); };
  for (int t = 0; t < 128; ++t) {
    if (th[t]->n != n || th[t]->trans_b != th[0]->trans_b || (th[t]->a == nullptr) != (th[0]->a == nullptr) ||
        th[t]->desc_b != th[0]->desc_b || th[t]->accumulate != th[0]->accumulate ||
        (th[0]->a == nullptr && th[t]->desc_a != th[0]->desc_a))
      emu::fail("wgmma: the warpgroup's threads issue different instructions");
  }
  if (th[0]->a != nullptr) {
    for (int t = 0; t < 128; ++t) {
      const int w = t / 32, g = (t % 32) >> 2, q4 = t & 3;
      for (int e = 0; e < 4; ++e)
        for (int h = 0; h < 2; ++h)
          A[(16 * w + g + 8 * (e & 1)) * 16 + 2 * q4 + h + 8 * (e >> 1)] =
              value(static_cast<uint16_t>(th[t]->a[e] >> (16 * h)));
    }
  } else {
    for (int m = 0; m < 64; ++m)
      for (int k = 0; k < 16; ++k) A[m * 16 + k] = value(desc_element(th[0]->desc_a, m, k, false));
  }
  for (int k = 0; k < 16; ++k)
    for (int c = 0; c < n; ++c) B[k * n + c] = value(desc_element(th[0]->desc_b, c, k, th[0]->trans_b));
  for (int t = 0; t < 128; ++t) {
    const int w = t / 32, g = (t % 32) >> 2, q4 = t & 3;
    for (int i = 0; i < n / 2; ++i) {
      const int row = 16 * w + g + 8 * ((i >> 1) & 1), col = (i >> 2) * 8 + 2 * q4 + (i & 1);
      double acc = th[t]->accumulate ? static_cast<double>(th[t]->d[i]) : 0.0;
      for (int k = 0; k < 16; ++k) acc += A[row * 16 + k] * B[k * n + col];
      th[t]->d[i] = static_cast<float>(acc);
    }
  }
}

template <typename Element>
inline void wgmma_collective(WgmmaPayload& p) {
  emu::Block& b = emu::block();
  const int t = emu::current_thread();
  emu::Warpgroup& wg = b.groups[t / 128];
  wg.payload[t % 128] = &p;
  if (++wg.arrived == 128) {
    wgmma_exec<Element>(reinterpret_cast<WgmmaPayload* const*>(wg.payload));
    wg.arrived = 0;
    ++wg.gen;
    return;
  }
  emu::Thread& th = b.threads[t];
  th.waiting = 4;
  th.gen = wg.gen;
  emu::yield_to_scheduler();
}

template <typename Element, int N, int kTransB>
struct WgmmaRS {
  static void run(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc, bool accumulate) {
    WgmmaPayload p{a, 0, desc, d, accumulate, N, kTransB != 0};
    wgmma_collective<Element>(p);
  }
};

template <typename Element, int N>
struct WgmmaSS {
  static void run(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
    WgmmaPayload p{nullptr, desc_a, desc_b, d, accumulate, N, false};
    wgmma_collective<Element>(p);
  }
};

}  // namespace sm90
}  // namespace arch
}  // namespace hstu
