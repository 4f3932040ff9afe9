// hstu attention backward, sm_80 path (mma.sync): dq, dk, dv and the bias-table gradients.
//
// with s = alpha q k^T + bias, g = sigmoid(s), a = s g (0 where invalid) and out = scale a v:
//
//   dv = scale a^T do        ds = scale (do v^T) * g (1 + s (1 - g))        dk = alpha ds^T q    dq = alpha ds k
//   d pos_weight[h', p(i) - p(j) + max_seq_len - 1] += ds_ij     d time_weight[h', bucket_ij] += ds_ij
//
// AttentionBwdKernel: one CTA per key block of one (sequence, head), grid = (B * H, cdiv(longest, kBlockN)).
// warp w owns keys 16 w .. 16 w + 15 and their dk, dv (fp32, registers). the CTA walks the query tiles that hold
// a valid pair with its keys (mask.h: query_tiles), double-buffered with cp.async, computing everything
// transposed (keys x queries), as FlashAttention's dk/dv loop does:
//
//   s^T = k q^T, dp^T = v do^T   ->  a^T, ds^T in registers  ->  dv += a^T do, dk += ds^T q
//
// ds^T also goes to shared memory (fp32) for the two reductions over keys:
//   - dq (non-deterministic mode): dq[tile] = ds k, one fp32 atomic per element per key block into dq_accum;
//   - d pos_weight: in the history a fixed r = p(i) - j is a diagonal of the tile; one thread per r sums it in
//     a fixed order (targets all sit at u: key j's target queries share r = u - j), then one atomic per table
//     entry per tile (or, deterministic, an add into the CTA's own partial-sum slot).
// d time_weight accumulates in a per-thread histogram in shared memory (bucket-major, one column per thread: no
// races, no bank conflicts, and no registers taken from dk / dv), summed over the CTA at the end in a fixed
// order and added with one atomic per bucket (or written to the CTA's slot).
//
// deterministic mode (opt-in): no atomics anywhere. AttentionDqKernel (one CTA per query block, like the
// forward) recomputes s and dp and accumulates dq in registers; the table gradients' slots are summed by
// ReduceSlotsKernel in a fixed order. the cost: s and dp are computed twice, and the slots' workspace
// (host/workspace.h).
#pragma once

#include "arch/arch.h"
#include "bias.h"
#include "fragment.h"
#include "host/workspace.h"
#include "mask.h"
#include "params.h"
#include "program.h"
#include "score_bias.h"
#include "tile.h"

namespace hstu {

// the derivative of silu(s) = s g at s, times the incoming gradient
HSTU_DEVICE HSTU_FORCEINLINE float silu_grad(float dy, float s, float g) { return dy * g * (1.0f + s * (1.0f - g)); }

template <typename Element_, int kHeadDim_, int kBlockM_, int kNWarps_, bool kHasPos_, bool kHasTime_>
struct AttentionBwdKernel {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kBlockM = kBlockM_;  // queries per tile
  static constexpr int kBlockN = 16 * kNWarps;  // keys per CTA
  static constexpr bool kHasPos = kHasPos_;
  static constexpr bool kHasTime = kHasTime_;
  static constexpr int kNThreads = 32 * kNWarps;
  static constexpr int kMinBlocksPerSm = 1;
  static_assert(kHeadDim % 64 == 0, "head dims are multiples of 64 (conflict-free padded shared-memory rows)");
  static_assert(kBlockM % 16 == 0, "query tiles are whole 16-query mma steps");
  // dq warp grid: kDqWarpsM x kDqWarpsN warps over [kBlockM, D]
  static constexpr int kDqWarpsM = kBlockM / 16;
  static constexpr int kDqWarpsN = kNWarps / kDqWarpsM;
  static constexpr int kDqCols = kHeadDim / kDqWarpsN;
  static_assert(kNWarps % kDqWarpsM == 0 && kHeadDim % kDqWarpsN == 0 && kDqCols % 16 == 0, "dq warp grid");

  using Tile = SmemTile<kHeadDim>;
  using Pos = PosWindow<kBlockM, kBlockN>;
  static constexpr int kDsLd = kBlockM + 4;  // fp32 ds^T rows: + 4 keeps the dq operand reads conflict-free
  // shared memory: k, v [kBlockN, D]; per stage (2): q, do [kBlockM, D], query timestamps [kBlockM], position
  // window [Pos::kSize]; ds^T [kBlockN, kDsLd] fp32; the time table
  static constexpr int kKOffset = 0;
  static constexpr int kVOffset = kKOffset + Tile::elements(kBlockN) * 2;
  static constexpr int kQOffset = kVOffset + Tile::elements(kBlockN) * 2;
  static constexpr int kDoOffset = kQOffset + 2 * Tile::elements(kBlockM) * 2;
  static constexpr int kTsOffset = kDoOffset + 2 * Tile::elements(kBlockM) * 2;
  static constexpr int kPosOffset = kTsOffset + (kHasTime ? 2 * kBlockM * 8 : 0);
  static constexpr int kDsOffset = kPosOffset + (kHasPos ? 2 * Pos::kSize * 4 : 0);
  static constexpr int kTimeOffset = kDsOffset + kBlockN * kDsLd * 4;
  static constexpr int kHistOffset = kTimeOffset + (kHasTime ? kTimeTableBytes : 0);
  static constexpr int kSmemBytes = kHistOffset + (kHasTime ? kMaxBuckets * kNThreads * 4 : 0);

  static HSTU_DEVICE HSTU_FORCEINLINE void run(const AttentionBwdParams& p) {
    const int key_block = arch::block_idx_y();
    const ProgramBlock pb = program_block<kBlockN>(p.seq_offsets, p.num_heads, key_block);
    const int b = pb.b, h = pb.h, seq_start = pb.start, n = pb.n, n0 = pb.row0;
    if (n0 >= n) return;
    const int u = p.num_targets != nullptr ? n - arch::load_global(p.num_targets + b) : n;
    const int window = p.max_attn_len;
    const int max_seq_len = p.bias.max_seq_len;
    const bool compute_dq = !p.deterministic;
    const bool compute_dpos = kHasPos && p.compute_dpos;
    const bool compute_dtime = kHasTime && p.compute_dtime;

    const int tid = arch::thread_idx();
    const int warp = tid / 32;
    const Lane l(tid % 32);
    char* smem = arch::dynamic_smem();
    uint16_t* s_k = reinterpret_cast<uint16_t*>(smem + kKOffset);
    uint16_t* s_v = reinterpret_cast<uint16_t*>(smem + kVOffset);
    uint16_t* s_q = reinterpret_cast<uint16_t*>(smem + kQOffset);
    uint16_t* s_do = reinterpret_cast<uint16_t*>(smem + kDoOffset);
    int64_t* s_ts = reinterpret_cast<int64_t*>(smem + kTsOffset);
    float* s_pos = reinterpret_cast<float*>(smem + kPosOffset);
    float* s_ds = reinterpret_cast<float*>(smem + kDsOffset);
    float* s_time = reinterpret_cast<float*>(smem + kTimeOffset);
    float* s_hist = reinterpret_cast<float*>(smem + kHistOffset) + tid;  // this thread's column

    const uint16_t* q = static_cast<const uint16_t*>(p.q) + seq_start * p.q_row_stride + h * p.q_head_stride;
    const uint16_t* k = static_cast<const uint16_t*>(p.k) + seq_start * p.k_row_stride + h * p.k_head_stride;
    const uint16_t* v = static_cast<const uint16_t*>(p.v) + seq_start * p.v_row_stride + h * p.v_head_stride;
    const uint16_t* dout = static_cast<const uint16_t*>(p.dout) + seq_start * p.do_row_stride + h * p.do_head_stride;
    const float* pos_row = kHasPos ? p.bias.pos_weight + h * p.bias.pos_head_stride : nullptr;
    TimeBuckets buckets;
    if (kHasTime) {
      buckets.init(p.bias);
      stage_time_table(s_time, p.bias, h, tid);
      if (compute_dtime)
        for (int bb = 0; bb < kMaxBuckets; ++bb) s_hist[bb * kNThreads] = 0.0f;
    }

    // this thread's two key rows (C-fragment rows g and g + 8 of the warp's 16)
    int key[2], pk[2];
    int64_t tk[2] = {0, 0};
    HSTU_UNROLL
    for (int r = 0; r < 2; ++r) {
      key[r] = n0 + warp * 16 + l.g + 8 * r;
      pk[r] = position(key[r], u);
      if (kHasTime && key[r] < n) tk[r] = arch::load_global(p.timestamps + seq_start + key[r]);
    }

    const TileRanges tiles = query_tiles(n0, kBlockN, n, u, window, kBlockM);
    const int num_tiles = tiles.count();

    auto load_queries = [&](int t) {
      const int m0 = tiles.start(t, kBlockM);
      const int stage = t & 1;
      load_tile_async<kBlockM, kHeadDim, kNThreads>(s_q + stage * Tile::elements(kBlockM), q, p.q_row_stride, m0, n - m0);
      load_tile_async<kBlockM, kHeadDim, kNThreads>(s_do + stage * Tile::elements(kBlockM), dout, p.do_row_stride, m0,
                                                    n - m0);
      if (kHasTime)
        load_i64_async<kBlockM, kNThreads>(s_ts + stage * kBlockM, p.query_timestamps + seq_start + m0, 0, n - m0);
      if (kHasPos)
        Pos::template stage<kNThreads>(s_pos + stage * Pos::kSize, pos_row, Pos::rmin(m0, n0, u), max_seq_len, tid);
    };

    load_tile_async<kBlockN, kHeadDim, kNThreads>(s_k, k, p.k_row_stride, n0, n - n0);
    load_tile_async<kBlockN, kHeadDim, kNThreads>(s_v, v, p.v_row_stride, n0, n - n0);
    load_queries(0);
    arch::cp_async_commit();

    float acc_dk[kHeadDim / 8][4], acc_dv[kHeadDim / 8][4];
    HSTU_UNROLL
    for (int i = 0; i < kHeadDim / 8; ++i)
      HSTU_UNROLL
      for (int e = 0; e < 4; ++e) acc_dk[i][e] = acc_dv[i][e] = 0.0f;

    for (int t = 0; t < num_tiles; ++t) {
      arch::cp_async_wait<0>();
      arch::sync_threads();
      if (t + 1 < num_tiles) load_queries(t + 1);
      arch::cp_async_commit();
      const int m0 = tiles.start(t, kBlockM);
      const uint16_t* tq = s_q + (t & 1) * Tile::elements(kBlockM);
      const uint16_t* tdo = s_do + (t & 1) * Tile::elements(kBlockM);
      const int64_t* tts = s_ts + (t & 1) * kBlockM;
      const float* tpos = s_pos + (t & 1) * Pos::kSize - Pos::rmin(m0, n0, u);

      // s^T = k q^T and dp^T = v do^T (keys x queries)
      float st[kBlockM / 8][4], dpt[kBlockM / 8][4];
      HSTU_UNROLL
      for (int i = 0; i < kBlockM / 8; ++i)
        HSTU_UNROLL
        for (int e = 0; e < 4; ++e) st[i][e] = dpt[i][e] = 0.0f;
      // (two loops, not one: fewer operand fragments in flight beside the dk / dv accumulators)
      HSTU_UNROLL
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        uint32_t ka[4];
        load_a<kHeadDim>(ka, s_k, warp * 16, kk * 16, l.lane);
        HSTU_UNROLL
        for (int np = 0; np < kBlockM / 16; ++np) {
          uint32_t bq[4];
          load_b_nk<kHeadDim>(bq, tq, np * 16, kk * 16, l.lane);
          arch::mma_16816<Element>(st[2 * np], ka, bq[0], bq[1]);
          arch::mma_16816<Element>(st[2 * np + 1], ka, bq[2], bq[3]);
        }
      }
      HSTU_UNROLL
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        uint32_t va[4];
        load_a<kHeadDim>(va, s_v, warp * 16, kk * 16, l.lane);
        HSTU_UNROLL
        for (int np = 0; np < kBlockM / 16; ++np) {
          uint32_t bo[4];
          load_b_nk<kHeadDim>(bo, tdo, np * 16, kk * 16, l.lane);
          arch::mma_16816<Element>(dpt[2 * np], va, bo[0], bo[1]);
          arch::mma_16816<Element>(dpt[2 * np + 1], va, bo[2], bo[3]);
        }
      }

      // a^T and ds^T (the mask zeroes the gate, which zeroes both)
      const bool all_valid = tile_all_valid(m0, m0 + kBlockM, n0, n0 + kBlockN, n, u, window);
      HSTU_UNROLL
      for (int nt = 0; nt < kBlockM / 8; ++nt) {
        HSTU_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1;
          const int col = nt * 8 + l.c_col(e);
          const int i = m0 + col;
          float x = st[nt][e] * p.alpha;
          if (kHasPos) x += tpos[position(i, u) - pk[r]];
          int bucket = 0;
          if (kHasTime) {
            bucket = buckets.bucket(tts[col], tk[r]);
            x += s_time[bucket];
          }
          float gate = silu_gate<Element>(x);
          if (!all_valid && !(i < n && key[r] < n && pair_valid(i, key[r], u, window))) gate = 0.0f;
          const float ds = silu_grad(dpt[nt][e] * p.scale, x, gate);
          if (compute_dtime) s_hist[bucket * kNThreads] += ds;
          st[nt][e] = x * gate;
          dpt[nt][e] = ds;
        }
      }

      // dv += a^T do, dk += ds^T q (queries are the reduction axis)
      HSTU_UNROLL
      for (int kk = 0; kk < kBlockM / 16; ++kk) {
        uint32_t pa[4];
        c_to_a<Element>(pa, st[2 * kk], st[2 * kk + 1]);
        HSTU_UNROLL
        for (int dp = 0; dp < kHeadDim / 16; ++dp) {
          uint32_t bo[4];
          load_b_kn<kHeadDim>(bo, tdo, kk * 16, dp * 16, l.lane);
          arch::mma_16816<Element>(acc_dv[2 * dp], pa, bo[0], bo[1]);
          arch::mma_16816<Element>(acc_dv[2 * dp + 1], pa, bo[2], bo[3]);
        }
      }
      HSTU_UNROLL
      for (int kk = 0; kk < kBlockM / 16; ++kk) {
        uint32_t dsa[4];
        c_to_a<Element>(dsa, dpt[2 * kk], dpt[2 * kk + 1]);
        HSTU_UNROLL
        for (int dp = 0; dp < kHeadDim / 16; ++dp) {
          uint32_t bq[4];
          load_b_kn<kHeadDim>(bq, tq, kk * 16, dp * 16, l.lane);
          arch::mma_16816<Element>(acc_dk[2 * dp], dsa, bq[0], bq[1]);
          arch::mma_16816<Element>(acc_dk[2 * dp + 1], dsa, bq[2], bq[3]);
        }
      }

      if (!(compute_dq || compute_dpos)) continue;
      HSTU_UNROLL
      for (int nt = 0; nt < kBlockM / 8; ++nt)
        HSTU_UNROLL
        for (int e = 0; e < 4; ++e) s_ds[(warp * 16 + l.c_row(e)) * kDsLd + nt * 8 + l.c_col(e)] = dpt[nt][e];
      arch::sync_threads();

      if (compute_dq) {
        // dq[m0 + 16 wm .., kDqCols wn ..] = ds k: ds from the fp32 ds^T, k transposed by ldmatrix
        const int wm = warp % kDqWarpsM, wn = warp / kDqWarpsM;
        float acc_dq[kDqCols / 8][4];
        HSTU_UNROLL
        for (int i = 0; i < kDqCols / 8; ++i)
          HSTU_UNROLL
          for (int e = 0; e < 4; ++e) acc_dq[i][e] = 0.0f;
        HSTU_UNROLL
        for (int kk = 0; kk < kBlockN / 16; ++kk) {
          uint32_t dsa[4];
          load_a_f32_km<Element>(dsa, s_ds, kDsLd, wm * 16, kk * 16, l);
          HSTU_UNROLL
          for (int dp = 0; dp < kDqCols / 16; ++dp) {
            uint32_t bk[4];
            load_b_kn<kHeadDim>(bk, s_k, kk * 16, wn * kDqCols + dp * 16, l.lane);
            arch::mma_16816<Element>(acc_dq[2 * dp], dsa, bk[0], bk[1]);
            arch::mma_16816<Element>(acc_dq[2 * dp + 1], dsa, bk[2], bk[3]);
          }
        }
        HSTU_UNROLL
        for (int r = 0; r < 2; ++r) {
          const int i = m0 + wm * 16 + l.g + 8 * r;
          if (i >= n) continue;
          float* dq_row = p.dq_accum + (static_cast<int64_t>(seq_start) + i) * p.dq_accum_row_stride +
                          h * p.dq_accum_head_stride + wn * kDqCols + 2 * l.t;
          HSTU_UNROLL
          for (int nt = 0; nt < kDqCols / 8; ++nt)
            arch::atomic_add2(dq_row + nt * 8, p.alpha * acc_dq[nt][2 * r], p.alpha * acc_dq[nt][2 * r + 1]);
        }
      }

      if (compute_dpos) reduce_pos_tile(p, s_ds, m0, n0, n, u, b, h, seq_start, key_block, tid);
    }

    // dk, dv
    uint16_t* dk = static_cast<uint16_t*>(p.dk) + seq_start * p.dk_row_stride + h * p.dk_head_stride;
    uint16_t* dv = static_cast<uint16_t*>(p.dv) + seq_start * p.dv_row_stride + h * p.dv_head_stride;
    HSTU_UNROLL
    for (int r = 0; r < 2; ++r) {
      if (key[r] >= n) continue;
      uint16_t* dk_row = dk + static_cast<int64_t>(key[r]) * p.dk_row_stride;
      uint16_t* dv_row = dv + static_cast<int64_t>(key[r]) * p.dv_row_stride;
      HSTU_UNROLL
      for (int nt = 0; nt < kHeadDim / 8; ++nt) {
        const int col = nt * 8 + 2 * l.t;
        arch::store_global(reinterpret_cast<uint32_t*>(dk_row + col),
                           arch::pack2<Element>(acc_dk[nt][2 * r] * p.alpha, acc_dk[nt][2 * r + 1] * p.alpha));
        arch::store_global(reinterpret_cast<uint32_t*>(dv_row + col),
                           arch::pack2<Element>(acc_dv[nt][2 * r] * p.scale, acc_dv[nt][2 * r + 1] * p.scale));
      }
    }

    if (compute_dtime) {
      // every thread's histogram, summed in thread order
      arch::sync_threads();
      if (tid <= p.bias.num_boundaries) {
        const float* column = reinterpret_cast<const float*>(smem + kHistOffset) + tid * kNThreads;
        float total = 0.0f;
        for (int x = 0; x < kNThreads; ++x) total += column[x];
        if (p.deterministic) {
          const int slot = bwd_slot(b, seq_start, key_block, kBlockN);
          arch::store_global(p.dtime_partial + (static_cast<int64_t>(h) * p.num_slots + slot) * kMaxBuckets + tid, total);
        } else {
          arch::atomic_add(p.dtime_weight + h * p.dtime_head_stride + tid, total);
        }
      }
    }
  }

  // d pos_weight of one tile from ds^T in shared memory: one thread per relative position r of the tile
  static HSTU_DEVICE HSTU_FORCEINLINE void reduce_pos_tile(const AttentionBwdParams& p, const float* s_ds, int m0,
                                                           int n0, int n, int u, int b, int h, int seq_start,
                                                           int key_block, int tid) {
    const int m1 = imin(m0 + kBlockM, n);
    const int n1 = imin(n0 + kBlockN, n);
    const int r_lo = imax(0, position(m0, u) - position(n1 - 1, u));
    const int r_hi = position(m1 - 1, u) - position(n0, u);
    for (int r = r_lo + tid; r <= r_hi; r += kNThreads) {
      float sum = 0.0f;
      for (int jl = 0; jl < n1 - n0; ++jl) {
        const int j = n0 + jl;
        const float* ds_row = s_ds + jl * kDsLd - m0;  // indexed by the query
        if (r == 0) {
          // valid pairs at r = 0 are the diagonal (history or target)
          if (j >= m0 && j < m1) sum += ds_row[j];
        } else if (j < u) {
          // history key j: queries at position j + r
          const int pi = j + r;
          if (pi < u) {
            if (pi >= m0 && pi < m1) sum += ds_row[pi];
          } else if (pi == u) {
            for (int i = imax(u, m0); i < m1; ++i) sum += ds_row[i];
          }
        }
      }
      if (p.deterministic) {
        const int slot = bwd_slot(b, seq_start, key_block, kBlockN);
        float* cell = p.dpos_partial + (static_cast<int64_t>(h) * p.num_slots + slot) * p.pos_partial_width + r;
        arch::store_global(cell, arch::load_global_rw(cell) + sum);
      } else if (sum != 0.0f) {
        arch::atomic_add(p.dpos_weight + h * p.dpos_head_stride + (p.bias.max_seq_len - 1) + r, sum);
      }
    }
  }
};

// deterministic dq: one CTA per query block of one (sequence, head), like the forward; s and dp are recomputed
// per key tile and dq = alpha sum_tiles ds k accumulates in registers, written once.
template <typename Element_, int kHeadDim_, int kBlockN_, int kNWarps_, bool kHasPos_, bool kHasTime_>
struct AttentionDqKernel {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kBlockM = 16 * kNWarps;
  static constexpr int kBlockN = kBlockN_;
  static constexpr bool kHasPos = kHasPos_;
  static constexpr bool kHasTime = kHasTime_;
  static constexpr int kNThreads = 32 * kNWarps;
  static constexpr int kMinBlocksPerSm = 1;
  static_assert(kHeadDim % 64 == 0 && kBlockN % 16 == 0, "");

  using Tile = SmemTile<kHeadDim>;
  using Pos = PosWindow<kBlockM, kBlockN>;
  static constexpr int kQOffset = 0;
  static constexpr int kDoOffset = kQOffset + Tile::elements(kBlockM) * 2;
  static constexpr int kKOffset = kDoOffset + Tile::elements(kBlockM) * 2;
  static constexpr int kVOffset = kKOffset + 2 * Tile::elements(kBlockN) * 2;
  static constexpr int kTsOffset = kVOffset + 2 * Tile::elements(kBlockN) * 2;
  static constexpr int kPosOffset = kTsOffset + (kHasTime ? 2 * kBlockN * 8 : 0);
  static constexpr int kTimeOffset = kPosOffset + (kHasPos ? 2 * Pos::kSize * 4 : 0);
  static constexpr int kSmemBytes = kTimeOffset + (kHasTime ? kTimeTableBytes : 0);

  static HSTU_DEVICE HSTU_FORCEINLINE void run(const AttentionBwdParams& p) {
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
    uint16_t* s_do = reinterpret_cast<uint16_t*>(smem + kDoOffset);
    uint16_t* s_k = reinterpret_cast<uint16_t*>(smem + kKOffset);
    uint16_t* s_v = reinterpret_cast<uint16_t*>(smem + kVOffset);
    int64_t* s_ts = reinterpret_cast<int64_t*>(smem + kTsOffset);
    float* s_pos = reinterpret_cast<float*>(smem + kPosOffset);
    float* s_time = reinterpret_cast<float*>(smem + kTimeOffset);

    const uint16_t* q = static_cast<const uint16_t*>(p.q) + seq_start * p.q_row_stride + h * p.q_head_stride;
    const uint16_t* k = static_cast<const uint16_t*>(p.k) + seq_start * p.k_row_stride + h * p.k_head_stride;
    const uint16_t* v = static_cast<const uint16_t*>(p.v) + seq_start * p.v_row_stride + h * p.v_head_stride;
    const uint16_t* dout = static_cast<const uint16_t*>(p.dout) + seq_start * p.do_row_stride + h * p.do_head_stride;
    const float* pos_row = kHasPos ? p.bias.pos_weight + h * p.bias.pos_head_stride : nullptr;
    TimeBuckets buckets;
    if (kHasTime) {
      buckets.init(p.bias);
      stage_time_table(s_time, p.bias, h, tid);
    }

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
        Pos::template stage<kNThreads>(s_pos + stage * Pos::kSize, pos_row, Pos::rmin(m0, n0, u), p.bias.max_seq_len,
                                       tid);
    };

    load_tile_async<kBlockM, kHeadDim, kNThreads>(s_q, q, p.q_row_stride, m0, n - m0);
    load_tile_async<kBlockM, kHeadDim, kNThreads>(s_do, dout, p.do_row_stride, m0, n - m0);
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

      float s[kBlockN / 8][4], dp[kBlockN / 8][4];
      HSTU_UNROLL
      for (int i = 0; i < kBlockN / 8; ++i)
        HSTU_UNROLL
        for (int e = 0; e < 4; ++e) s[i][e] = dp[i][e] = 0.0f;
      HSTU_UNROLL
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        uint32_t qa[4], oa[4];
        load_a<kHeadDim>(qa, s_q, warp * 16, kk * 16, l.lane);
        load_a<kHeadDim>(oa, s_do, warp * 16, kk * 16, l.lane);
        HSTU_UNROLL
        for (int np = 0; np < kBlockN / 16; ++np) {
          uint32_t bk[4], bv[4];
          load_b_nk<kHeadDim>(bk, tk, np * 16, kk * 16, l.lane);
          arch::mma_16816<Element>(s[2 * np], qa, bk[0], bk[1]);
          arch::mma_16816<Element>(s[2 * np + 1], qa, bk[2], bk[3]);
          load_b_nk<kHeadDim>(bv, tv, np * 16, kk * 16, l.lane);
          arch::mma_16816<Element>(dp[2 * np], oa, bv[0], bv[1]);
          arch::mma_16816<Element>(dp[2 * np + 1], oa, bv[2], bv[3]);
        }
      }

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
          float gate = silu_gate<Element>(x);
          if (!all_valid && !(j < n && row[r] < n && pair_valid(row[r], j, u, window))) gate = 0.0f;
          s[nt][e] = silu_grad(dp[nt][e] * p.scale, x, gate);
        }
      }

      HSTU_UNROLL
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t dsa[4];
        c_to_a<Element>(dsa, s[2 * kk], s[2 * kk + 1]);
        HSTU_UNROLL
        for (int dd = 0; dd < kHeadDim / 16; ++dd) {
          uint32_t bk[4];
          load_b_kn<kHeadDim>(bk, tk, kk * 16, dd * 16, l.lane);
          arch::mma_16816<Element>(acc[2 * dd], dsa, bk[0], bk[1]);
          arch::mma_16816<Element>(acc[2 * dd + 1], dsa, bk[2], bk[3]);
        }
      }
    }

    uint16_t* dq = static_cast<uint16_t*>(p.dq) + seq_start * p.dq_row_stride + h * p.dq_head_stride;
    store_c_rows<Element, kHeadDim>(dq, p.dq_row_stride, row, n, &acc[0][0], p.alpha, l);
  }
};

// deterministic table gradients: out[hb][offset + x] = sum over the heads of table row hb and over the slots, in
// a fixed order, of partial[h][slot][x], for x < width. grid = (cdiv(width, kNThreads), Hb).
struct ReduceSlotsParams {
  const float* partial = nullptr;  // [H, num_slots, partial_stride]
  float* out = nullptr;
  int64_t out_head_stride = 0;
  int out_offset = 0;
  int width = 0;
  int partial_stride = 0;
  int num_slots = 0;
  int num_heads = 0;
  bool shared_table = false;  // Hb == 1: every head adds into row 0
};

struct ReduceSlotsKernel {
  static constexpr int kNThreads = 128;
  static constexpr int kMinBlocksPerSm = 1;
  static constexpr int kSmemBytes = 0;

  static HSTU_DEVICE HSTU_FORCEINLINE void run(const ReduceSlotsParams& p) {
    const int x = arch::block_idx_x() * kNThreads + arch::thread_idx();
    if (x >= p.width) return;
    const int hb = arch::block_idx_y();
    const int h_begin = p.shared_table ? 0 : hb;
    const int h_end = p.shared_table ? p.num_heads : hb + 1;
    float total = 0.0f;
    for (int h = h_begin; h < h_end; ++h)
      for (int s = 0; s < p.num_slots; ++s)
        total += arch::load_global(p.partial + (static_cast<int64_t>(h) * p.num_slots + s) * p.partial_stride + x);
    arch::store_global(p.out + hb * p.out_head_stride + p.out_offset + x, total);
  }
};

}  // namespace hstu
