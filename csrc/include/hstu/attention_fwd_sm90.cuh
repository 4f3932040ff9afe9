// hstu attention forward, sm_90a path: TMA loads, wgmma, a warp-specialised producer / consumer pipeline.
//
// one CTA computes one 128-query block of one (sequence, head), the same grid and block order as the sm80 path
// (attention_fwd.cuh), with three warpgroups:
//   - warpgroup 0, the producer: gives registers back (setmaxnreg) and one thread loads the q tile, then streams
//     the K and V tiles of the
//     key tiles the block visits (mask.h: key_tiles) by TMA into a kStages-deep ring of shared-memory stages,
//     each stage guarded by a "full" mbarrier (TMA bytes landed) and an "empty" one (consumers done with it);
//   - warpgroups 1 and 2, the consumers: 64 query rows each of the q tile, loaded once by TMA. per key tile:
//     s = q k^T (wgmma, q and k from shared memory, K-major), a = silu(alpha s + bias)
//     masked in registers, o += a v (wgmma, a from registers, v from shared memory read MN-major), then the
//     stage is released. silu needs no running max, so nothing is rescaled between tiles.
// producer warp 1 finishes each stage: it waits for the stage's TMA bytes ("loaded" barrier), zeroes the V rows
// past the sequence end (a tile's box reads the next sequence's rows: masked scores are exact zeros, but 0 * inf
// would not be, and the sm80 path zero-fills those rows too), stages the tile's window of the position table
// (score_bias.h: PosWindow) and its key timestamps, makes its stores visible to wgmma (fence.proxy.async) and
// arrives on the stage's "full" barrier, which the consumers wait on; the time table sits in shared memory for
// the whole CTA.
// overlapping the two GEMMs of consecutive tiles and ping-ponging the warpgroups are the next steps once this
// path has run on a GPU.
//
// rows of the next sequence that a tile's TMA box reads past this sequence's end: their scores are masked by a
// select and their V rows zeroed in shared memory, so non-finite values elsewhere in the batch cannot leak in;
// rows past the tensor's end read as zeros.
#pragma once

#include "arch/arch.h"
#include "fragment.h"
#include "mask.h"
#include "params_sm90.h"
#include "program.h"
#include "score_bias.h"

#if defined(HSTU_HOST_EMULATION)
#include "arch/sm90_emulation.h"
#elif defined(__CUDACC__)
#include "arch/sm90.cuh"
#endif

namespace hstu {

template <int kHeadDim>
struct FwdSm90Config {
  static constexpr int kBlockN = 128;
  static constexpr int kStages = 2;
};

template <typename Element_, int kHeadDim_, int kBlockN_, int kStages_, bool kHasPos_, bool kHasTime_>
struct AttentionFwdSm90Kernel {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr bool kHasPos = kHasPos_;
  static constexpr bool kHasTime = kHasTime_;
  static constexpr int kConsumers = 2;  // warpgroups
  static constexpr int kBlockM = 64 * kConsumers;
  static constexpr int kNThreads = 128 * (kConsumers + 1);
  static constexpr int kMinBlocksPerSm = 1;
  static constexpr bool kSm90aOnly = true;  // the body exists for sm_90a only (the other passes trap)
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = 232;
  static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= 65536, "register file");
  static_assert(kHeadDim == 64 || kHeadDim == 128, "wgmma n = head dim: 64 or 128");
  static_assert(kBlockN == 64 || kBlockN == 128, "wgmma n = key tile: 64 or 128");

  // a K or V tile: kHeadDim / 64 panels of kBlockN rows x 128 bytes, each in the 128B-swizzle layout
  static constexpr int kPanels = kHeadDim / 64;
  static constexpr int kPanelElems = kBlockN * 64;
  static constexpr int kTileElems = kPanels * kPanelElems;
  static constexpr int kTileBytes = kTileElems * 2;
  static constexpr int kQElems = kPanels * kBlockM * 64;
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kQOffset + kQElems * 2;
  static constexpr int kVOffset = kKOffset + kStages * kTileBytes;
  static constexpr int kBarOffset = kVOffset + kStages * kTileBytes;
  using Pos = PosWindow<kBlockM, kBlockN>;
  static constexpr int kTsOffset = kBarOffset + (3 * kStages + 1) * 8;
  static constexpr int kPosOffset = kTsOffset + kStages * kBlockN * 8;
  static constexpr int kTimeOffset = kPosOffset + kStages * Pos::kSize * 4;
  // + 1024: the dynamic shared memory base is aligned up to the swizzle atom in the kernel
  static constexpr int kSmemBytes = 1024 + kTimeOffset + kTimeTableBytes;

  static HSTU_DEVICE HSTU_FORCEINLINE void run(const AttentionFwdSm90Params& params) {
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)) || \
    defined(HSTU_HOST_EMULATION)
    namespace sm90 = arch::sm90;
    const AttentionFwdParams& p = params.fwd;
    const int m_block = arch::grid_dim_y() - 1 - arch::block_idx_y();
    const ProgramBlock pb = program_block<kBlockM>(p.seq_offsets, p.num_heads, m_block);
    const int b = pb.b, h = pb.h, seq_start = pb.start, n = pb.n, m0 = pb.row0;
    if (m0 >= n) return;
    const int u = p.num_targets != nullptr ? n - arch::load_global(p.num_targets + b) : n;
    const int window = p.max_attn_len;
    const TileRanges tiles = key_tiles(m0, kBlockM, n, u, window, kBlockN);
    const int num_tiles = tiles.count();

    char* raw = arch::dynamic_smem();
    char* smem = raw + ((1024 - (sm90::smem_addr(raw) & 1023)) & 1023);
    uint16_t* s_q = reinterpret_cast<uint16_t*>(smem + kQOffset);
    uint16_t* s_k = reinterpret_cast<uint16_t*>(smem + kKOffset);
    uint16_t* s_v = reinterpret_cast<uint16_t*>(smem + kVOffset);
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + kBarOffset);
    uint64_t* empty = full + kStages;
    uint64_t* loaded = empty + kStages;
    uint64_t* q_full = loaded + kStages;
    int64_t* s_ts = reinterpret_cast<int64_t*>(smem + kTsOffset);
    float* s_pos = reinterpret_cast<float*>(smem + kPosOffset);
    float* s_time = reinterpret_cast<float*>(smem + kTimeOffset);

    const int tid = arch::thread_idx();
    if (tid == 0) {
      for (int s = 0; s < kStages; ++s) {
        sm90::mbar_init(&loaded[s], 1);  // the TMA thread, with the stage's bytes
        sm90::mbar_init(&full[s], 32);  // warp 1's lanes, once the stage is finished
        sm90::mbar_init(&empty[s], 4 * kConsumers);  // one arrival per consumer warp
      }
      sm90::mbar_init(q_full, 1);
      sm90::fence_barrier_init();
    }
    if (kHasTime && tid >= 128) stage_time_table(s_time, p.bias, h, tid - 128);
    arch::sync_threads();

    if (tid < 128) {
      // producer
      sm90::regs_dealloc<kProducerRegs>();
      if (tid == 0) {
        sm90::prefetch_tensor_map(&params.tma_q);
        sm90::prefetch_tensor_map(&params.tma_k);
        sm90::prefetch_tensor_map(&params.tma_v);
        sm90::mbar_arrive_expect_tx(q_full, kQElems * 2);
        HSTU_UNROLL
        for (int pn = 0; pn < kPanels; ++pn)
          sm90::tma_load_3d(s_q + pn * kBlockM * 64, &params.tma_q, q_full, 64 * pn, h, seq_start + m0);
        for (int t = 0; t < num_tiles; ++t) {
          const int s = t % kStages;
          if (t >= kStages) sm90::mbar_wait(&empty[s], ((t / kStages) - 1) & 1);
          sm90::mbar_arrive_expect_tx(&loaded[s], 2 * kTileBytes);
          const int row = seq_start + tiles.start(t, kBlockN);
          HSTU_UNROLL
          for (int pn = 0; pn < kPanels; ++pn) {
            sm90::tma_load_3d(s_k + s * kTileElems + pn * kPanelElems, &params.tma_k, &loaded[s], 64 * pn, h, row);
            sm90::tma_load_3d(s_v + s * kTileElems + pn * kPanelElems, &params.tma_v, &loaded[s], 64 * pn, h, row);
          }
        }
      } else if (tid / 32 == 1) {
        // finish each stage: V rows past the sequence end, the tile's bias
        const int lane = tid % 32;
        const float* pos_row = kHasPos ? p.bias.pos_weight + h * p.bias.pos_head_stride : nullptr;
        for (int t = 0; t < num_tiles; ++t) {
          const int s = t % kStages;
          const int n0 = tiles.start(t, kBlockN);
          if (t >= kStages) sm90::mbar_wait(&empty[s], ((t / kStages) - 1) & 1);
          sm90::mbar_wait(&loaded[s], (t / kStages) & 1);
          // a 128-byte swizzled row stays one contiguous 128-byte row: zero it whole, 16 bytes a lane-step
          const int first_past = n - n0;
          for (int x = lane; first_past < kBlockN && x < (kBlockN - first_past) * 8 * kPanels; x += 32) {
            const int r = first_past + x / (8 * kPanels), pn = (x / 8) % kPanels, chunk = x % 8;
            sm90::store_zero16(s_v + s * kTileElems + pn * kPanelElems + r * 64 + chunk * 8);
          }
          if (kHasPos) {
            const int rmin = Pos::rmin(m0, n0, u);
            for (int x = lane; x < Pos::kSize; x += 32)
              s_pos[s * Pos::kSize + x] = arch::load_global(pos_row + pos_bias_index(rmin + x, 0, p.bias.max_seq_len));
          }
          if (kHasTime) {
            for (int x = lane; x < kBlockN; x += 32)
              s_ts[s * kBlockN + x] = n0 + x < n ? arch::load_global(p.timestamps + seq_start + n0 + x) : 0;
          }
          sm90::fence_proxy_async();
          sm90::mbar_arrive(&full[s]);
        }
      }
      return;
    }

    // consumers
    sm90::regs_alloc<kConsumerRegs>();
    const int cwarp = (tid - 128) / 32;  // 0 .. 4 kConsumers - 1: warpgroup cwarp / 4, rows 16 cwarp ..
    const Lane l(tid % 32);
    const int warp_row0 = m0 + 16 * cwarp;

    TimeBuckets buckets;
    if (kHasTime) buckets.init(p.bias);

    int row[2], pq[2];
    int64_t tq[2] = {0, 0};
    HSTU_UNROLL
    for (int r = 0; r < 2; ++r) {
      row[r] = warp_row0 + l.g + 8 * r;
      pq[r] = position(row[r], u);
      if (kHasTime && row[r] < n) tq[r] = arch::load_global(p.query_timestamps + seq_start + row[r]);
    }

    // this warpgroup's 64 rows of each q panel (64 rows x 128 bytes = 8 swizzle atoms further per warpgroup)
    const uint16_t* wq = s_q + (cwarp / 4) * 64 * 64;
    sm90::mbar_wait(q_full, 0);

    // accumulator element i of a 64 x N wgmma: n8 block i / 4, element e = i % 4 as mma.sync's C (fragment.h)
    float acc[kHeadDim / 2];
    HSTU_UNROLL
    for (int i = 0; i < kHeadDim / 2; ++i) acc[i] = 0.0f;

    for (int t = 0; t < num_tiles; ++t) {
      const int s = t % kStages;
      const int n0 = tiles.start(t, kBlockN);
      sm90::mbar_wait(&full[s], (t / kStages) & 1);
      const uint16_t* tk = s_k + s * kTileElems;
      const uint16_t* tv = s_v + s * kTileElems;
      const int64_t* tts = s_ts + s * kBlockN;
      const float* tpos = s_pos + s * Pos::kSize - Pos::rmin(m0, n0, u);

      // s = q k^T: k-step kk reads 16 columns of panel kk / 4, 32 bytes per step into its swizzle atom
      float sc[kBlockN / 2];
      sm90::wgmma_fence();
      HSTU_UNROLL
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        const uint64_t desc_q = sm90::desc_sw128(wq + (kk / 4) * kBlockM * 64 + (kk % 4) * 16, 16, 1024);
        const uint64_t desc_k = sm90::desc_sw128(tk + (kk / 4) * kPanelElems + (kk % 4) * 16, 16, 1024);
        sm90::WgmmaSS<Element, kBlockN>::run(sc, desc_q, desc_k, kk > 0);
      }
      sm90::wgmma_commit();
      sm90::wgmma_wait<0>();
      sm90::fence_operands(sc);

      // a = silu(alpha s + bias), masked
      const bool all_valid = tile_all_valid(warp_row0, warp_row0 + 16, n0, n0 + kBlockN, n, u, window);
      HSTU_UNROLL
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        HSTU_UNROLL
        for (int c = 0; c < 2; ++c) {
          const int col = nt * 8 + 2 * l.t + c;
          const int j = n0 + col;
          const int pk = position(j, u);
          const int64_t tk_j = kHasTime ? tts[col] : 0;
          HSTU_UNROLL
          for (int r = 0; r < 2; ++r) {
            const int i = 4 * nt + 2 * r + c;
            float x = sc[i] * p.alpha;
            if (kHasPos) x += tpos[pq[r] - pk];
            if (kHasTime) x += s_time[buckets.bucket(tq[r], tk_j)];
            float a = x * silu_gate<Element>(x);
            if (!all_valid && !(j < n && pair_valid(row[r], j, u, window))) a = 0.0f;
            sc[i] = a;
          }
        }
      }

      // o += a v: a's k-step kk is the C fragments of n8 blocks 2 kk, 2 kk + 1; v's starts 16 rows (2048 bytes)
      // further, its second 64-column panel kPanelElems on (LBO)
      uint32_t pa[kBlockN / 16][4];
      HSTU_UNROLL
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        pa[kk][0] = arch::pack2<Element>(sc[8 * kk + 0], sc[8 * kk + 1]);
        pa[kk][1] = arch::pack2<Element>(sc[8 * kk + 2], sc[8 * kk + 3]);
        pa[kk][2] = arch::pack2<Element>(sc[8 * kk + 4], sc[8 * kk + 5]);
        pa[kk][3] = arch::pack2<Element>(sc[8 * kk + 6], sc[8 * kk + 7]);
      }
      sm90::wgmma_fence();
      HSTU_UNROLL
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        const uint64_t desc = sm90::desc_sw128(tv + kk * 16 * 64, kPanelElems * 2, 1024);
        sm90::WgmmaRS<Element, kHeadDim, 1>::run(acc, pa[kk], desc, true);
      }
      sm90::wgmma_commit();
      sm90::wgmma_wait<0>();
      sm90::fence_operands(acc);
      if (l.lane == 0) sm90::mbar_arrive(&empty[s]);
    }

    uint16_t* out = static_cast<uint16_t*>(p.out) + seq_start * p.o_row_stride + h * p.o_head_stride;
    store_c_rows<Element, kHeadDim>(out, p.o_row_stride, row, n, acc, p.scale, l);
#elif defined(__CUDA_ARCH__)
    // a device pass other than sm_90a (the extension compiles every file for every target): never launched
    // there (the launcher picks this family on compute capability 9.0 only), and loud if it ever is
    (void)params;
    __trap();
#else
    (void)params;
#endif
  }
};

}  // namespace hstu
