// hstu attention forward, sm_80 path (mma.sync; runs on ampere and hopper).
//
// one CTA computes one query block of one (sequence, head): grid = (B * H, cdiv(longest, kBlockM)), the query
// blocks in reverse order so the longest (most expensive) start first. warp w owns query rows 16 w .. 16 w + 15
// of the block and all head-dim columns of their output (fp32 accumulators in registers). the CTA walks the key
// tiles that hold a valid pair (mask.h: key_tiles), double-buffered with cp.async:
//
//   s = alpha q k^T + bias       (q fragments stay in registers; k by ldmatrix from shared memory)
//   a = s * sigmoid(s), zero where the pair is invalid (only in tiles that are not all valid)
//   o += a v                     (a goes from accumulator to operand fragments in registers)
//
// silu needs no running max or normaliser, so no rescaling between tiles. out = scale * o in the input dtype.
#pragma once

#include "arch/arch.h"
#include "fragment.h"
#include "mask.h"
#include "params.h"
#include "program.h"
#include "score_bias.h"
#include "tile.h"

namespace hstu {

template <typename Element_, int kHeadDim_, int kBlockN_, int kNWarps_, bool kHasPos_, bool kHasTime_>
struct AttentionFwdKernel {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kBlockM = 16 * kNWarps;
  static constexpr int kBlockN = kBlockN_;
  static constexpr bool kHasPos = kHasPos_;
  static constexpr bool kHasTime = kHasTime_;
  static constexpr int kNThreads = 32 * kNWarps;
  static constexpr int kMinBlocksPerSm = 1;
  static_assert(kHeadDim % 64 == 0, "head dims are multiples of 64 (conflict-free padded shared-memory rows)");
  static_assert(kBlockN % 16 == 0, "key tiles are whole 16-key mma steps");

  using Tile = SmemTile<kHeadDim>;
  using Pos = PosWindow<kBlockM, kBlockN>;
  // shared memory: q [kBlockM, D]; per stage (2): k, v [kBlockN, D], key timestamps [kBlockN], position-table
  // window [Pos::kSize]; the time table
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kQOffset + Tile::elements(kBlockM) * 2;
  static constexpr int kVOffset = kKOffset + 2 * Tile::elements(kBlockN) * 2;
  static constexpr int kTsOffset = kVOffset + 2 * Tile::elements(kBlockN) * 2;
  static constexpr int kPosOffset = kTsOffset + (kHasTime ? 2 * kBlockN * 8 : 0);
  static constexpr int kTimeOffset = kPosOffset + (kHasPos ? 2 * Pos::kSize * 4 : 0);
  static constexpr int kSmemBytes = kTimeOffset + (kHasTime ? kTimeTableBytes : 0);

  static HSTU_DEVICE HSTU_FORCEINLINE void run(const AttentionFwdParams& p) {
    // query blocks in reverse order: the longest (most expensive) start first
    const int m_block = arch::grid_dim_y() - 1 - arch::block_idx_y();
    const ProgramBlock pb = program_block<kBlockM>(p.seq_offsets, p.num_heads, m_block);
    const int b = pb.b, h = pb.h, seq_start = pb.start, n = pb.n, m0 = pb.row0;
    if (m0 >= n) return;
    const int u = p.num_targets != nullptr ? n - arch::load_global(p.num_targets + b) : n;
    const int window = p.max_attn_len;

    const int tid = arch::thread_idx();
    const int warp = tid / 32;
    const Lane l(tid % 32);
    char* smem = arch::dynamic_smem();
    uint16_t* s_q = reinterpret_cast<uint16_t*>(smem + kQOffset);
    uint16_t* s_k = reinterpret_cast<uint16_t*>(smem + kKOffset);
    uint16_t* s_v = reinterpret_cast<uint16_t*>(smem + kVOffset);
    int64_t* s_ts = reinterpret_cast<int64_t*>(smem + kTsOffset);
    float* s_pos = reinterpret_cast<float*>(smem + kPosOffset);
    float* s_time = reinterpret_cast<float*>(smem + kTimeOffset);

    const uint16_t* q = static_cast<const uint16_t*>(p.q) + seq_start * p.q_row_stride + h * p.q_head_stride;
    const uint16_t* k = static_cast<const uint16_t*>(p.k) + seq_start * p.k_row_stride + h * p.k_head_stride;
    const uint16_t* v = static_cast<const uint16_t*>(p.v) + seq_start * p.v_row_stride + h * p.v_head_stride;

    const float* pos_row = kHasPos ? p.bias.pos_weight + h * p.bias.pos_head_stride : nullptr;
    TimeBuckets buckets;
    if (kHasTime) {
      buckets.init(p.bias);
      stage_time_table(s_time, p.bias, h, tid);
    }

    // this thread's two query rows (C-fragment rows g and g + 8 of the warp's 16)
    int row[2], pq[2];
    int64_t tq[2] = {0, 0};
    HSTU_UNROLL
    for (int r = 0; r < 2; ++r) {
      row[r] = m0 + warp * 16 + l.g + 8 * r;
      pq[r] = position(row[r], u);
      if (kHasTime && row[r] < n) tq[r] = arch::load_global(p.query_timestamps + seq_start + row[r]);
    }

    const TileRanges tiles = key_tiles(m0, kBlockM, n, u, window, kBlockN);
    const int num_tiles = tiles.count();

    auto load_keys = [&](int t) {
      const int n0 = tiles.start(t, kBlockN);
      const int stage = t & 1;
      load_tile_async<kBlockN, kHeadDim, kNThreads>(s_k + stage * Tile::elements(kBlockN), k, p.k_row_stride, n0, n - n0);
      load_tile_async<kBlockN, kHeadDim, kNThreads>(s_v + stage * Tile::elements(kBlockN), v, p.v_row_stride, n0, n - n0);
      if (kHasTime) load_i64_async<kBlockN, kNThreads>(s_ts + stage * kBlockN, p.timestamps + seq_start + n0, 0, n - n0);
      if (kHasPos)
        Pos::template stage<kNThreads>(s_pos + stage * Pos::kSize, pos_row, Pos::rmin(m0, n0, u), p.bias.max_seq_len, tid);
    };

    load_tile_async<kBlockM, kHeadDim, kNThreads>(s_q, q, p.q_row_stride, m0, n - m0);
    load_keys(0);
    arch::cp_async_commit();

    float acc[kHeadDim / 8][4];
    HSTU_UNROLL
    for (int i = 0; i < kHeadDim / 8; ++i)
      HSTU_UNROLL
      for (int e = 0; e < 4; ++e) acc[i][e] = 0.0f;

    for (int t = 0; t < num_tiles; ++t) {
      arch::cp_async_wait<0>();
      arch::sync_threads();
      if (t + 1 < num_tiles) load_keys(t + 1);
      arch::cp_async_commit();
      const int n0 = tiles.start(t, kBlockN);
      const uint16_t* tk = s_k + (t & 1) * Tile::elements(kBlockN);
      const uint16_t* tv = s_v + (t & 1) * Tile::elements(kBlockN);
      const int64_t* tts = s_ts + (t & 1) * kBlockN;
      const float* tpos = s_pos + (t & 1) * Pos::kSize - Pos::rmin(m0, n0, u);

      // s = q k^T
      float s[kBlockN / 8][4];
      HSTU_UNROLL
      for (int i = 0; i < kBlockN / 8; ++i)
        HSTU_UNROLL
        for (int e = 0; e < 4; ++e) s[i][e] = 0.0f;
      HSTU_UNROLL
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        // q fragments are re-read from shared memory each tile: registers go to the accumulators
        uint32_t qa[4];
        load_a<kHeadDim>(qa, s_q, warp * 16, kk * 16, l.lane);
        HSTU_UNROLL
        for (int np = 0; np < kBlockN / 16; ++np) {
          uint32_t bk[4];
          load_b_nk<kHeadDim>(bk, tk, np * 16, kk * 16, l.lane);
          arch::mma_16816<Element>(s[2 * np], qa, bk[0], bk[1]);
          arch::mma_16816<Element>(s[2 * np + 1], qa, bk[2], bk[3]);
        }
      }

      // a = silu(alpha s + bias), masked
      const bool all_valid = tile_all_valid(m0, m0 + kBlockM, n0, n0 + kBlockN, n, u, window);
      HSTU_UNROLL
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        HSTU_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1;
          const int col = nt * 8 + l.c_col(e);
          const int j = n0 + col;
          float x = s[nt][e] * p.alpha;
          if (kHasPos) x += tpos[pq[r] - position(j, u)];
          if (kHasTime) x += s_time[buckets.bucket(tq[r], tts[col])];
          float a = x * silu_gate<Element>(x);
          if (!all_valid && !(j < n && pair_valid(row[r], j, u, window))) a = 0.0f;
          s[nt][e] = a;
        }
      }

      // o += a v
      HSTU_UNROLL
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t pa[4];
        c_to_a<Element>(pa, s[2 * kk], s[2 * kk + 1]);
        HSTU_UNROLL
        for (int dp = 0; dp < kHeadDim / 16; ++dp) {
          uint32_t bv[4];
          load_b_kn<kHeadDim>(bv, tv, kk * 16, dp * 16, l.lane);
          arch::mma_16816<Element>(acc[2 * dp], pa, bv[0], bv[1]);
          arch::mma_16816<Element>(acc[2 * dp + 1], pa, bv[2], bv[3]);
        }
      }
    }

    uint16_t* out = static_cast<uint16_t*>(p.out) + seq_start * p.o_row_stride + h * p.o_head_stride;
    store_c_rows<Element, kHeadDim>(out, p.o_row_stride, row, n, &acc[0][0], p.scale, l);
  }
};

}  // namespace hstu
