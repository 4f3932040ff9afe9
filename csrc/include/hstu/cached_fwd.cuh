// hstu cached (m-falcon) candidate scoring, sm_80 path (mma.sync).
//
// the op is defined by hstu_kernels/ops/hstu_cached_attention/naive.py. one CTA scores one block of kBlockM
// candidates of one (user, head): grid = (B * H, cdiv(most candidates of any user, kBlockM)). every candidate of
// user b sits at position m (the history length), so the valid history keys [lo, m) (lo = max(0, m - window))
// are the same for the whole block: each history k/v tile is read once per candidate block and multiplied by
// all its candidates, and the position bias pos_weight[h', m - j + max_seq_len - 1] is one value per key column.
// the time bias is per (candidate, key). the candidate's own (diagonal) term is added at the end:
//
//   out_c = scale * (sum_{j in [lo, m)} silu(s_cj) v_cache_j + silu(s_cc) v_c)
//
// warp w owns candidates 16 w .. 16 w + 15 of the block; the self term's q_c . k_c is split over the 4 lanes
// holding a row and summed by two shuffles.
#pragma once

#include "arch/arch.h"
#include "fragment.h"
#include "params.h"
#include "program.h"
#include "score_bias.h"
#include "tile.h"

namespace hstu {

template <typename Element_, int kHeadDim_, int kBlockN_, int kNWarps_, bool kHasPos_, bool kHasTime_>
struct CachedFwdKernel {
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
  static_assert(kBlockM <= 2 * kBlockN, "the candidates' own k, v reuse the two k / v stages");

  using Tile = SmemTile<kHeadDim>;
  // shared memory: q [kBlockM, D]; per stage (2): k, v [kBlockN, D], key timestamps [kBlockN], position bias
  // per key [kBlockN]; the time table. after the loop the k / v stages hold the candidates' own k / v.
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kQOffset + Tile::elements(kBlockM) * 2;
  static constexpr int kVOffset = kKOffset + 2 * Tile::elements(kBlockN) * 2;
  static constexpr int kTsOffset = kVOffset + 2 * Tile::elements(kBlockN) * 2;
  static constexpr int kPosOffset = kTsOffset + (kHasTime ? 2 * kBlockN * 8 : 0);
  static constexpr int kTimeOffset = kPosOffset + (kHasPos ? 2 * kBlockN * 4 : 0);
  static constexpr int kSmemBytes = kTimeOffset + (kHasTime ? kTimeTableBytes : 0);

  static HSTU_DEVICE HSTU_FORCEINLINE void run(const CachedFwdParams& p) {
    const ProgramBlock pb = program_block<kBlockM>(p.cand_offsets, p.num_heads, arch::block_idx_y());
    const int b = pb.b, h = pb.h, c0 = pb.start, nc = pb.n, m0 = pb.row0;
    if (m0 >= nc) return;
    const int h0 = arch::load_global(p.cache_offsets + b);
    const int m = arch::load_global(p.cache_offsets + b + 1) - h0;
    const int lo = p.max_attn_len > 0 ? imax(m - p.max_attn_len, 0) : 0;
    const int max_seq_len = p.bias.max_seq_len;

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

    const uint16_t* q = static_cast<const uint16_t*>(p.q) + c0 * p.q_row_stride + h * p.q_head_stride;
    const uint16_t* kc = static_cast<const uint16_t*>(p.k_cache) + h0 * p.kc_row_stride + h * p.kc_head_stride;
    const uint16_t* vc = static_cast<const uint16_t*>(p.v_cache) + h0 * p.vc_row_stride + h * p.vc_head_stride;
    const float* pos_row = kHasPos ? p.bias.pos_weight + h * p.bias.pos_head_stride : nullptr;
    TimeBuckets buckets;
    if (kHasTime) {
      buckets.init(p.bias);
      stage_time_table(s_time, p.bias, h, tid);
    }

    int row[2];
    int64_t tq[2] = {0, 0};
    HSTU_UNROLL
    for (int r = 0; r < 2; ++r) {
      row[r] = m0 + warp * 16 + l.g + 8 * r;
      if (kHasTime && row[r] < nc) tq[r] = arch::load_global(p.query_timestamps + c0 + row[r]);
    }

    const int num_tiles = m > lo ? ceil_div(m - lo, kBlockN) : 0;
    auto load_keys = [&](int t) {
      const int n0 = lo + t * kBlockN;
      const int stage = t & 1;
      load_tile_async<kBlockN, kHeadDim, kNThreads>(s_k + stage * Tile::elements(kBlockN), kc, p.kc_row_stride, n0, m - n0);
      load_tile_async<kBlockN, kHeadDim, kNThreads>(s_v + stage * Tile::elements(kBlockN), vc, p.vc_row_stride, n0, m - n0);
      if (kHasTime)
        load_i64_async<kBlockN, kNThreads>(s_ts + stage * kBlockN, p.cache_timestamps + h0 + n0, 0, m - n0);
      if (kHasPos) {
        // every candidate sits at position m: one table entry per key column (clamped past the history end)
        for (int c = tid; c < kBlockN; c += kNThreads)
          arch::cp_async_4(s_pos + stage * kBlockN + c, pos_row + pos_bias_index(m, n0 + c, max_seq_len), true);
      }
    };

    load_tile_async<kBlockM, kHeadDim, kNThreads>(s_q, q, p.q_row_stride, m0, nc - m0);
    if (num_tiles > 0) load_keys(0);
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
      const int n0 = lo + t * kBlockN;
      const uint16_t* tk = s_k + (t & 1) * Tile::elements(kBlockN);
      const uint16_t* tv = s_v + (t & 1) * Tile::elements(kBlockN);
      const int64_t* tts = s_ts + (t & 1) * kBlockN;
      const float* tpos = s_pos + (t & 1) * kBlockN;

      float s[kBlockN / 8][4];
      HSTU_UNROLL
      for (int i = 0; i < kBlockN / 8; ++i)
        HSTU_UNROLL
        for (int e = 0; e < 4; ++e) s[i][e] = 0.0f;
      HSTU_UNROLL
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
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

      const bool partial = n0 + kBlockN > m;
      HSTU_UNROLL
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        HSTU_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int col = nt * 8 + l.c_col(e);
          float x = s[nt][e] * p.alpha;
          if (kHasPos) x += tpos[col];
          if (kHasTime) x += s_time[buckets.bucket(tq[e >> 1], tts[col])];
          float a = x * silu_gate<Element>(x);
          if (partial && n0 + col >= m) a = 0.0f;
          s[nt][e] = a;
        }
      }

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

    // the candidates' own k and v into the (now free) k / v stages
    arch::cp_async_wait<0>();
    arch::sync_threads();
    const uint16_t* ks = static_cast<const uint16_t*>(p.k) + c0 * p.k_row_stride + h * p.k_head_stride;
    const uint16_t* vs = static_cast<const uint16_t*>(p.v) + c0 * p.v_row_stride + h * p.v_head_stride;
    load_tile_async<kBlockM, kHeadDim, kNThreads>(s_k, ks, p.k_row_stride, m0, nc - m0);
    load_tile_async<kBlockM, kHeadDim, kNThreads>(s_v, vs, p.v_row_stride, m0, nc - m0);
    arch::cp_async_commit();
    arch::cp_async_wait<0>();
    arch::sync_threads();

    HSTU_UNROLL
    for (int r = 0; r < 2; ++r) {
      const int lr = warp * 16 + l.g + 8 * r;  // row inside the block
      // q_c . k_c: lane t of the quad takes chunks t, t + 4, ... of the row
      float dot = 0.0f;
      HSTU_UNROLL
      for (int c = l.t; c < kHeadDim / 8; c += 4) {
        const uint16_t* qrow = s_q + Tile::offset(lr, c * 8);
        const uint16_t* krow = s_k + Tile::offset(lr, c * 8);
        HSTU_UNROLL
        for (int x = 0; x < 8; ++x) dot += arch::to_float<Element>(qrow[x]) * arch::to_float<Element>(krow[x]);
      }
      dot += arch::shfl_xor(dot, 1);
      dot += arch::shfl_xor(dot, 2);
      float x = dot * p.alpha;
      if (kHasPos) x += arch::load_global(pos_row + (max_seq_len - 1));
      if (kHasTime && row[r] < nc) x += s_time[buckets.bucket(tq[r], arch::load_global(p.timestamps + c0 + row[r]))];
      const float a_self = x * silu_gate<Element>(x);
      HSTU_UNROLL
      for (int nt = 0; nt < kHeadDim / 8; ++nt) {
        const uint16_t* vrow = s_v + Tile::offset(lr, nt * 8 + 2 * l.t);
        acc[nt][2 * r] += a_self * arch::to_float<Element>(vrow[0]);
        acc[nt][2 * r + 1] += a_self * arch::to_float<Element>(vrow[1]);
      }
    }

    uint16_t* out = static_cast<uint16_t*>(p.out) + c0 * p.o_row_stride + h * p.o_head_stride;
    store_c_rows<Element, kHeadDim>(out, p.o_row_stride, row, nc, &acc[0][0], p.scale, l);
  }
};

}  // namespace hstu
