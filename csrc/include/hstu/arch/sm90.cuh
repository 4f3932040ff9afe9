// device layer of the sm_90a kernel family (see arch.h): mbarriers, TMA tile loads, warpgroup MMA (wgmma) with
// shared-memory matrix descriptors, register reallocation and named barriers. compiled for sm_90a only (the
// *_sm90.cu instantiations); nothing here has a host emulation yet, so these kernels are verified by compiling
// (ptxas) and, on a GPU, by the parity tests.
//
// layouts the kernels rely on (PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply"):
//   - a 16-bit operand tile of R rows x 64 columns (128 bytes a row) written by TMA with CU_TENSOR_MAP_SWIZZLE_128B
//     into a 1024-byte aligned buffer is the canonical 128B-swizzle layout: 8-row atoms of 1024 bytes, the 16-byte
//     chunk c of row r stored at chunk c ^ (r % 8). a wider tile is several such 64-column panels.
//   - K-major operand (k contiguous, here: K for s = q k^T): descriptor SBO = 1024 (next 8 rows), LBO unused;
//     the k16 step s inside a panel starts 32 s bytes further (the swizzle is applied to the address bits).
//   - MN-major operand (n contiguous, here: V for o = a v, transposed with imm-trans-b = 1): LBO = the byte
//     distance between 64-column panels, SBO = 1024 (next 8 k-rows); the k16 step s starts 2048 s bytes further.
//   - register fragments: warp w of the warpgroup owns rows 16 w .. 16 w + 15 of the m64 tile; its A fragment for
//     one k16 step and its accumulator for each n8 column block are laid out as mma.sync.m16n8k16's (fragment.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../numeric.h"
#include "sm90_desc.h"

namespace hstu {
namespace arch {
namespace sm90 {

#define HSTU_SM90_FN __device__ __forceinline__

HSTU_SM90_FN uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// ---- mbarriers ----

HSTU_SM90_FN void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}

// the inits visible to the async proxy (TMA) and to the other threads after the next CTA barrier
HSTU_SM90_FN void fence_barrier_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }

HSTU_SM90_FN void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}

// one arrival that also announces `bytes` of TMA traffic the phase must wait for
HSTU_SM90_FN void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}

// wait until the phase with this parity has completed
HSTU_SM90_FN void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  } while (!done);
}

// generic-proxy shared-memory writes made visible to the async proxy (TMA, wgmma operand reads)
HSTU_SM90_FN void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

HSTU_SM90_FN void store_zero16(void* smem) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(smem_addr(smem)), "r"(0) : "memory");
}

// ---- TMA ----

// a [box rows, 64] tile of a 3-d tensor map (dims: head dim, head, row) at coordinates (c0, c1, c2); completes
// its bytes on `bar`
HSTU_SM90_FN void tma_load_3d(void* smem, const void* tensor_map, uint64_t* bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], "
      "[%2];\n" ::"r"(smem_addr(smem)),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

HSTU_SM90_FN void prefetch_tensor_map(const void* tensor_map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(tensor_map)) : "memory");
}

// ---- registers and barriers ----

template <int kRegs>
HSTU_SM90_FN void regs_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

template <int kRegs>
HSTU_SM90_FN void regs_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// a barrier among `threads` threads (whole warps) on hardware barrier `id` (0 is __syncthreads')
HSTU_SM90_FN void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ---- wgmma ----

HSTU_SM90_FN void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
HSTU_SM90_FN void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }

template <int N>
HSTU_SM90_FN void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// accumulator registers stay untouched by the compiler across an asynchronous wgmma only if it sees them as
// read and written there: the wgmma asm lists them as "+f", and this marks them live around fences and waits
template <int N>
HSTU_SM90_FN void fence_operands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// shared-memory matrix descriptor, 128-byte swizzle (the buffer 1024-byte aligned, so base offset 0)
HSTU_SM90_FN uint64_t desc_sw128(const void* smem, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return desc_sw128_bits(smem_addr(smem), lbo_bytes, sbo_bytes);
}

// d (+)= a b for a 64 x N tile, k = 16: a from registers (4 x b16x2 per thread), b from shared memory
// (descriptor); kTransB = 1 reads b MN-major. accumulate = false overwrites d.
template <typename Element, int N, int kTransB>
struct WgmmaRS;

#define HSTU_WGMMA_D8(i) "+f"(d[i + 0]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), \
                         "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])

#define HSTU_WGMMA_RS_N64(ETYPE, ELEM)                                                                         \
  template <int kTransB>                                                                                       \
  struct WgmmaRS<ELEM, 64, kTransB> {                                                                          \
    HSTU_SM90_FN static void run(float (&d)[32], const uint32_t (&a)[4], uint64_t desc, bool accumulate) {    \
      asm volatile(                                                                                            \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"                                                       \
          "wgmma.mma_async.sync.aligned.m64n64k16.f32." ETYPE "." ETYPE " "                                   \
          "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "  \
          "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %37;\n" \
          "}\n"                                                                                                \
          : HSTU_WGMMA_D8(0), HSTU_WGMMA_D8(8), HSTU_WGMMA_D8(16), HSTU_WGMMA_D8(24)                         \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(kTransB), "r"(int(accumulate)));      \
    }                                                                                                          \
  };

#define HSTU_WGMMA_RS_N128(ETYPE, ELEM)                                                                        \
  template <int kTransB>                                                                                       \
  struct WgmmaRS<ELEM, 128, kTransB> {                                                                         \
    HSTU_SM90_FN static void run(float (&d)[64], const uint32_t (&a)[4], uint64_t desc, bool accumulate) {    \
      asm volatile(                                                                                            \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\n"                                                       \
          "wgmma.mma_async.sync.aligned.m64n128k16.f32." ETYPE "." ETYPE " "                                  \
          "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "  \
          "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "   \
          "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "   \
          "%59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, %69;\n"                              \
          "}\n"                                                                                                \
          : HSTU_WGMMA_D8(0), HSTU_WGMMA_D8(8), HSTU_WGMMA_D8(16), HSTU_WGMMA_D8(24), HSTU_WGMMA_D8(32),     \
            HSTU_WGMMA_D8(40), HSTU_WGMMA_D8(48), HSTU_WGMMA_D8(56)                                           \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(kTransB), "r"(int(accumulate)));      \
    }                                                                                                          \
  };

// d (+)= a b for a 64 x N tile, k = 16, both operands from shared memory, K-major (no transposes)
template <typename Element, int N>
struct WgmmaSS;

#define HSTU_WGMMA_SS_N64(ETYPE, ELEM)                                                                         \
  template <>                                                                                                  \
  struct WgmmaSS<ELEM, 64> {                                                                                   \
    HSTU_SM90_FN static void run(float (&d)[32], uint64_t desc_a, uint64_t desc_b, bool accumulate) {         \
      asm volatile(                                                                                            \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                       \
          "wgmma.mma_async.sync.aligned.m64n64k16.f32." ETYPE "." ETYPE " "                                   \
          "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "  \
          "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n"                 \
          "}\n"                                                                                                \
          : HSTU_WGMMA_D8(0), HSTU_WGMMA_D8(8), HSTU_WGMMA_D8(16), HSTU_WGMMA_D8(24)                         \
          : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)));                                                 \
    }                                                                                                          \
  };

#define HSTU_WGMMA_SS_N128(ETYPE, ELEM)                                                                        \
  template <>                                                                                                  \
  struct WgmmaSS<ELEM, 128> {                                                                                  \
    HSTU_SM90_FN static void run(float (&d)[64], uint64_t desc_a, uint64_t desc_b, bool accumulate) {         \
      asm volatile(                                                                                            \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                       \
          "wgmma.mma_async.sync.aligned.m64n128k16.f32." ETYPE "." ETYPE " "                                  \
          "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "  \
          "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "   \
          "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "   \
          "%59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n"                                              \
          "}\n"                                                                                                \
          : HSTU_WGMMA_D8(0), HSTU_WGMMA_D8(8), HSTU_WGMMA_D8(16), HSTU_WGMMA_D8(24), HSTU_WGMMA_D8(32),     \
            HSTU_WGMMA_D8(40), HSTU_WGMMA_D8(48), HSTU_WGMMA_D8(56)                                           \
          : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)));                                                 \
    }                                                                                                          \
  };

HSTU_WGMMA_SS_N64("bf16", bf16)
HSTU_WGMMA_SS_N64("f16", fp16)
HSTU_WGMMA_SS_N128("bf16", bf16)
HSTU_WGMMA_SS_N128("f16", fp16)

#undef HSTU_WGMMA_SS_N64
#undef HSTU_WGMMA_SS_N128

HSTU_WGMMA_RS_N64("bf16", bf16)
HSTU_WGMMA_RS_N64("f16", fp16)
HSTU_WGMMA_RS_N128("bf16", bf16)
HSTU_WGMMA_RS_N128("f16", fp16)

#undef HSTU_WGMMA_RS_N64
#undef HSTU_WGMMA_RS_N128
#undef HSTU_WGMMA_D8
#undef HSTU_SM90_FN

}  // namespace sm90
}  // namespace arch
}  // namespace hstu
