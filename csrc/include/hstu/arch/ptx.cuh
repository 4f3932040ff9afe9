// device implementation of the arch layer (see arch.h): PTX for sm_80 and newer (mma.sync m16n8k16, ldmatrix,
// cp.async), with a vectorised fp32 reduction on sm_90.
#pragma once

#include <cuda_runtime.h>

namespace hstu {
namespace arch {

#define HSTU_ARCH_FN __device__ __forceinline__

HSTU_ARCH_FN int thread_idx() { return static_cast<int>(threadIdx.x); }
HSTU_ARCH_FN int block_idx_x() { return static_cast<int>(blockIdx.x); }
HSTU_ARCH_FN int block_idx_y() { return static_cast<int>(blockIdx.y); }
HSTU_ARCH_FN int grid_dim_y() { return static_cast<int>(gridDim.y); }
HSTU_ARCH_FN void sync_threads() { __syncthreads(); }

HSTU_ARCH_FN char* dynamic_smem() {
  extern __shared__ __align__(128) char hstu_smem[];
  return hstu_smem;
}

HSTU_ARCH_FN uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// ---- warp-collective ----

HSTU_ARCH_FN float shfl_xor(float v, int lane_mask) { return __shfl_xor_sync(0xffffffffu, v, lane_mask); }

// four 8x8 b16 matrices; lane l gives the row address of row (l % 8) of matrix (l / 8) and receives, for each
// matrix, the pair at row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 (transposed: rows and columns swapped).
HSTU_ARCH_FN void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem_row)));
}

HSTU_ARCH_FN void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem_row)));
}

// d += a b for a 16x16 (row) by 16x8 (col) tile, fp32 accumulators
template <typename Element>
HSTU_ARCH_FN void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t b0, const uint32_t b1);

template <>
HSTU_ARCH_FN void mma_16816<bf16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t b0, const uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
HSTU_ARCH_FN void mma_16816<fp16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t b0, const uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- async copies (zero-fill when pred is false: nothing is read from gmem then) ----

HSTU_ARCH_FN void cp_async_16(void* smem, const void* gmem, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(pred ? 16 : 0));
}

HSTU_ARCH_FN void cp_async_8(void* smem, const void* gmem, bool pred) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(pred ? 8 : 0));
}

HSTU_ARCH_FN void cp_async_4(void* smem, const void* gmem, bool pred) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(pred ? 4 : 0));
}

HSTU_ARCH_FN void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
HSTU_ARCH_FN void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ---- global memory ----

template <typename T>
HSTU_ARCH_FN T load_global(const T* p) {
  return __ldg(p);
}

template <typename T>
HSTU_ARCH_FN void store_global(T* p, T v) {
  *p = v;
}

HSTU_ARCH_FN float load_global_rw(const float* p) { return *p; }

HSTU_ARCH_FN void atomic_add(float* p, float v) { atomicAdd(p, v); }

// two adjacent fp32 (8-byte aligned): one vector reduction on sm_90, two scalar ones before
HSTU_ARCH_FN void atomic_add2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.relaxed.gpu.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(a), "f"(b) : "memory");
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// ---- conversions ----

template <typename Element>
HSTU_ARCH_FN uint32_t pack2(float lo, float hi);

template <>
HSTU_ARCH_FN uint32_t pack2<bf16>(float lo, float hi) {
  uint32_t d;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
  return d;
}

template <>
HSTU_ARCH_FN uint32_t pack2<fp16>(float lo, float hi) {
  uint32_t d;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
  return d;
}

template <typename Element>
HSTU_ARCH_FN float to_float(uint16_t bits);

template <>
HSTU_ARCH_FN float to_float<bf16>(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

template <>
HSTU_ARCH_FN float to_float<fp16>(uint16_t bits) {
  float f;
  asm("cvt.f32.f16 %0, %1;\n" : "=f"(f) : "h"(bits));
  return f;
}

// ---- math ----

// 1 / (1 + 2^(-x log2 e)) with MUFU ex2 and rcp (relative error ~1e-7; rcp(inf) = 0 keeps x -> -inf finite)
HSTU_ARCH_FN float sigmoid(float x) {
  float e, r;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(e) : "f"(-1.4426950408889634f * x));
  asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(r) : "f"(1.0f + e));
  return r;
}

// 0.5 tanh(x / 2) + 0.5 with one MUFU op (absolute error ~2.5e-4: below bf16 rounding, used for bf16 only)
HSTU_ARCH_FN float sigmoid_tanh(float x) {
  float t;
  asm("tanh.approx.f32 %0, %1;\n" : "=f"(t) : "f"(0.5f * x));
  return 0.5f * t + 0.5f;
}

#undef HSTU_ARCH_FN

}  // namespace arch
}  // namespace hstu
