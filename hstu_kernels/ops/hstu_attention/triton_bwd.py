"""Fused Triton HSTU attention: backward kernel (dq, dk, dv, d pos_weight, d time_weight) and its launcher.

One program owns one key block ``[n0, n1)`` of one (sequence, head) pair::

    grid = (B * H, cdiv(longest, BLOCK_N))

keeps ``k, v`` and the ``dk, dv`` accumulators (fp32) on chip, and loops over the query blocks that hold a valid
pair with its keys: ``[n0, n1)`` for a block of target keys (only the diagonal is valid there), else ``[n0, n)``,
cut to ``[n0, min(u, n1 + max_attn_len))`` when the window keeps every target row away. Each tile is computed
transposed (keys x queries, as in FlashAttention's dk/dv loop)::

    s^T = alpha k q^T + bias^T   dA^T = scale v dO^T   g = sig(s^T) * valid (the mask zeroes the gate)
    a^T = s^T g                  dv += scale a^T dO    ds^T = dA^T g (1 + s^T (1 - g))
    dk += ds^T q                 dq[rows] += ds k      (vectorised fp32 atomics into an fp32 buffer, cast last)

SiLU is recomputed, nothing N x N is stored; ``alpha`` is applied once to the accumulators, ``scale`` to ``dA`` and
to ``a`` before its cast (fp16 range).
Query tiles where every pair is valid skip the mask, as in the forward; the masked ones run in one loop (two
loops in all: on sm_90 that spilled ~40% less than one loop per masked range). The atomics make dq, d pos_weight and
d time_weight non-deterministic in their last bits (summation order).

Bias-table gradients are reduced on chip:

- ``d time_weight``: per tile, sums of ``ds^T`` over ``dt >= b_k`` for each boundary, differenced into per-bucket
  sums and accumulated in an ``[NBP]`` register vector; one atomic per table entry per *program* at the end.
  (A ``[BLOCK_N, NBP]`` accumulator avoided the cross-warp reductions but spilled ~0.7 KB more on sm_90.)
- ``d pos_weight``: a valid pair off the diagonal has ``r = p(i) - p(j) = p(i) - j >= 1``, which for a fixed
  query column ``i`` is a bijection of the key row ``j``. One ``tl.gather`` along the key axis permutes each column
  of ``ds^T`` so that row ``d`` holds relative position ``r0 + d`` or ``r0 + BLOCK_N + d`` (the tile spans at most
  ``BLOCK_M + BLOCK_N - 1 <= 2 BLOCK_N`` of them), two masked row-sums give the tile's partial sums, and two masked
  vector ``tl.atomic_add`` per tile write them (one atomic per table entry per tile). Diagonal pairs (all at
  ``r = 0``) land at ``p(i) - j <= 0`` (``< 0`` for targets) and are folded into one scalar atomic on ``r = 0``.
"""

import torch
import triton
import triton.language as tl

from ..common.triton_device import (
    block_rows,
    boundary,
    history_length,
    program_block,
    sigmoid,
    tile_mask,
    time_bias,
    time_gap,
)
from ..common.triton_host import autotuned, launch, length_bucket, next_pow2, prune_configs
from .triton_fwd import _pos_bias, _valid_mask, kernel_flags

# (BLOCK_M, BLOCK_N, num_warps, num_stages) with BLOCK_M <= BLOCK_N: tests set it to run one config
BWD_CONFIG_OVERRIDE = None


@triton.jit
def _bwd_tile(
    dk, dv, acc_tw, k, v, pk, tk, offs_n, start_n, start_m, n, u, seq_start, h,
    Q_bh, DO_bh, DQ_bh, stride_qm, stride_dom, stride_dqm, QTS, PW_h, TW_h, TB, DPW_h,
    alpha, scale, max_seq_len, max_attn_len,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr,
    NUM_BOUNDARIES: tl.constexpr, NBP: tl.constexpr, TIME_I32: tl.constexpr,
    COMPUTE_DPW: tl.constexpr, COMPUTE_DTW: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, FAST_SIGMOID: tl.constexpr, MASKED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row_ok = offs_m < n
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_mask = tile_mask(row_ok, offs_dqk, DQK, BLOCK_DQK)
    do_mask = tile_mask(row_ok, offs_dv, DV, BLOCK_DV)
    q = tl.load(Q_bh + offs_m[:, None] * stride_qm + offs_dqk[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO_bh + offs_m[:, None] * stride_dom + offs_dv[None, :], mask=do_mask, other=0.0)
    pq = tl.minimum(offs_m, u)

    # both products first: the elementwise work below then ends in ds^T with short live ranges
    sT = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION) * alpha  # [BLOCK_N, BLOCK_M]
    dpT = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION) * scale
    if MASKED:
        validT = _valid_mask(pq[None, :], pk[:, None], offs_m[None, :], offs_n[:, None], max_attn_len, HAS_WINDOW)
    else:
        validT = None
    if HAS_POS:
        sT += _pos_bias(pq[None, :], pk[:, None], PW_h, max_seq_len, validT, MASKED)
    if HAS_TIME:
        tq = tl.load(QTS + seq_start + offs_m, mask=row_ok, other=0)
        sT += time_bias(time_gap(tq[None, :], tk[:, None], TIME_I32), TW_h, TB, NUM_BOUNDARIES, TIME_I32)
    sig = sigmoid(sT, FAST_SIGMOID)
    if MASKED:
        # a zero gate zeroes both a = s sig and ds = dA sig (1 + s (1 - sig)) (s is finite): the mask dies here
        sig = tl.where(validT, sig, 0.0)
    aT = sT * sig
    dsT = dpT * sig * (1.0 + sT * (1.0 - sig))
    if COMPUTE_DTW:
        # bucket k holds the pairs with b_k <= dt < b_(k+1): row sums of ds over dt >= b_k, differenced. The gap
        # is recomputed (keys minus queries, so it is not merged with the bias's and kept alive across the dots)
        dt = time_gap(tk[:, None], tq[None, :], TIME_I32)
        kcol = tl.arange(0, NBP)
        above = tl.sum(tl.sum(dsT, axis=1), axis=0)  # dt >= b_0 = -inf
        for t in tl.static_range(NUM_BOUNDARIES):
            nxt = tl.sum(tl.sum(tl.where(dt >= boundary(TB, t, TIME_I32), dsT, 0.0), axis=1), axis=0)
            acc_tw += tl.where(kcol == t, above - nxt, 0.0)
            above = nxt
        acc_tw += tl.where(kcol == NUM_BOUNDARIES, above, 0.0)
    # scaled before the cast, as in the forward: fp16 keeps SiLU(s) * scale below 65504
    dv += tl.dot((aT * scale).to(do.dtype), do, input_precision=INPUT_PRECISION)
    ds_lp = dsT.to(q.dtype)
    dk += tl.dot(ds_lp, q, input_precision=INPUT_PRECISION)
    # dq (without alpha, applied on the fp32 buffer at the end): fp32 atomics, one per element per key block
    dq = tl.dot(tl.trans(ds_lp), k, input_precision=INPUT_PRECISION)  # [BLOCK_M, BLOCK_DQK]
    tl.atomic_add(DQ_bh + offs_m[:, None] * stride_dqm + offs_dqk[None, :], dq, mask=q_mask, sem="relaxed")

    if COMPUTE_DPW:
        # r = p(i) - j for query column i and key row j; with a_i = p(i) - p(start_m) in [0, BLOCK_M) and
        # r0 = p(start_m) - (start_n + BLOCK_N - 1), key row jl holds r = r0 + (a_i + BLOCK_N - 1 - jl): one
        # permutation per column, gathered as d = (a_i - 1 - jl) mod BLOCK_N; d >= a_i is r = r0 + d, d < a_i is
        # r = r0 + BLOCK_N + d (BLOCK_M <= BLOCK_N keeps every r of the tile in [r0, r0 + 2 BLOCK_N))
        a = pq - tl.minimum(start_m, u)
        r0 = tl.minimum(start_m, u) - (start_n + BLOCK_N - 1)
        d = tl.arange(0, BLOCK_N)
        z = tl.gather(dsT, (a[None, :] + (BLOCK_N - 1) - d[:, None]) & (BLOCK_N - 1), axis=0)  # [BLOCK_N, BLOCK_M]
        low = d[:, None] >= a[None, :]
        g_lo = tl.sum(tl.where(low, z, 0.0), axis=1)  # tile's sum of ds at r = r0 + d
        g_hi = tl.sum(tl.where(low, 0.0, z), axis=1)  # ... at r = r0 + BLOCK_N + d
        r_lo = r0 + d
        r_hi = r_lo + BLOCK_N
        tl.atomic_add(DPW_h + (max_seq_len - 1) + r_lo, g_lo, mask=(r_lo >= 1) & (r_lo < max_seq_len), sem="relaxed")
        tl.atomic_add(DPW_h + (max_seq_len - 1) + r_hi, g_hi, mask=(r_hi >= 1) & (r_hi < max_seq_len), sem="relaxed")
        if r0 <= 0:  # diagonal pairs (r = 0) sit at p(i) - j <= 0 in this tile: one scalar atomic
            diag = tl.sum(tl.where(r_lo <= 0, g_lo, 0.0), axis=0) + tl.sum(tl.where(r_hi <= 0, g_hi, 0.0), axis=0)
            tl.atomic_add(DPW_h + (max_seq_len - 1), diag, sem="relaxed")
    return dk, dv, acc_tw


@triton.jit(do_not_specialize=["max_seq_len", "max_attn_len", "AUTOTUNE_LEN"])
def hstu_attention_bwd_kernel(
    Q, K, V, DO, DQ, DK, DV_, SeqOffsets, NumTargets, TS, QTS, PW, TW, TB, DPW, DTW,
    stride_qm, stride_qh, stride_km, stride_kh, stride_vm, stride_vh, stride_dom, stride_doh,
    stride_dqm, stride_dqh, stride_dkm, stride_dkh, stride_dvm, stride_dvh,
    stride_pwh, stride_twh, stride_dpwh, stride_dtwh,
    H, alpha, scale, max_seq_len, max_attn_len, AUTOTUNE_LEN,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr,
    NUM_BOUNDARIES: tl.constexpr, NBP: tl.constexpr, TIME_I32: tl.constexpr,
    COMPUTE_DPW: tl.constexpr, COMPUTE_DTW: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, FAST_SIGMOID: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tl.static_assert(BLOCK_M <= BLOCK_N, "the d pos_weight reduction needs BLOCK_M <= BLOCK_N")
    # the first key blocks see the most queries: they start first
    b, h, seq_start, n, start_n = program_block(SeqOffsets, tl.program_id(1), H, BLOCK_N)
    if start_n >= n:
        return
    u = history_length(NumTargets, b, n, HAS_TARGETS)
    offs_n, col_ok, end_n = block_rows(start_n, n, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    k_mask = tile_mask(col_ok, offs_dqk, DQK, BLOCK_DQK)
    v_mask = tile_mask(col_ok, offs_dv, DV, BLOCK_DV)
    k = tl.load(K + seq_start * stride_km + h * stride_kh + offs_n[:, None] * stride_km + offs_dqk[None, :],
                mask=k_mask, other=0.0)
    v = tl.load(V + seq_start * stride_vm + h * stride_vh + offs_n[:, None] * stride_vm + offs_dv[None, :],
                mask=v_mask, other=0.0)
    pk = tl.minimum(offs_n, u)
    if HAS_TIME:
        tk = tl.load(TS + seq_start + offs_n, mask=col_ok, other=0)
    else:
        tk = offs_n  # unused
    Q_bh = Q + seq_start * stride_qm + h * stride_qh
    DO_bh = DO + seq_start * stride_dom + h * stride_doh
    DQ_bh = DQ + seq_start * stride_dqm + h * stride_dqh
    PW_h = PW + h * stride_pwh
    TW_h = TW + h * stride_twh
    DPW_h = DPW + h * stride_dpwh

    # query range [start_n, q_hi): see the module docstring
    q_hi = n
    if HAS_WINDOW:
        q_hi = tl.where(u > end_n - 1 + max_attn_len, tl.minimum(u, end_n + max_attn_len), n)
    q_hi = tl.where(start_n >= u, end_n, q_hi)
    q_lo = (start_n // BLOCK_M) * BLOCK_M
    # query blocks where every pair with these keys is valid: rows >= end_n, all keys history (end_n <= u),
    # and inside the window (rows <= start_n + max_attn_len; targets too only when u <= start_n + max_attn_len)
    full_lo = ((start_n + BLOCK_N + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
    full_hi = q_hi
    if HAS_WINDOW:
        full_hi = tl.where(u <= start_n + max_attn_len, q_hi, ((start_n + max_attn_len + 1) // BLOCK_M) * BLOCK_M)
        full_hi = tl.minimum(full_hi, q_hi)
    has_full = (start_n + BLOCK_N <= u) & (full_lo < full_hi)
    a_end = tl.where(has_full, full_lo, q_hi)
    b_end = tl.where(has_full, full_hi, q_hi)

    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    acc_tw = tl.zeros([NBP], dtype=tl.float32)
    # masked query blocks, the diagonal [q_lo, a_end) and the window edge / targets [b_end, q_hi), run as one
    # loop over both ranges laid end to end (fewer loops: less register shuffling of dk, dv between them)
    n_a = tl.maximum(tl.cdiv(a_end - q_lo, BLOCK_M), 0)
    n_c = tl.maximum(tl.cdiv(q_hi - b_end, BLOCK_M), 0)
    for t in range(0, n_a + n_c):
        start_m = tl.where(t < n_a, q_lo + t * BLOCK_M, b_end + (t - n_a) * BLOCK_M)
        dk, dv, acc_tw = _bwd_tile(
            dk, dv, acc_tw, k, v, pk, tk, offs_n, start_n, start_m, n, u, seq_start, h,
            Q_bh, DO_bh, DQ_bh, stride_qm, stride_dom, stride_dqm, QTS, PW_h, TW_h, TB, DPW_h,
            alpha, scale, max_seq_len, max_attn_len, DQK, DV, BLOCK_DQK, BLOCK_DV,
            HAS_WINDOW, HAS_POS, HAS_TIME, NUM_BOUNDARIES, NBP, TIME_I32, COMPUTE_DPW, COMPUTE_DTW,
            INPUT_PRECISION, FAST_SIGMOID, True, BLOCK_M, BLOCK_N,
        )
    for start_m in range(a_end, b_end, BLOCK_M):  # fully valid: no mask
        dk, dv, acc_tw = _bwd_tile(
            dk, dv, acc_tw, k, v, pk, tk, offs_n, start_n, start_m, n, u, seq_start, h,
            Q_bh, DO_bh, DQ_bh, stride_qm, stride_dom, stride_dqm, QTS, PW_h, TW_h, TB, DPW_h,
            alpha, scale, max_seq_len, max_attn_len, DQK, DV, BLOCK_DQK, BLOCK_DV,
            HAS_WINDOW, HAS_POS, HAS_TIME, NUM_BOUNDARIES, NBP, TIME_I32, COMPUTE_DPW, COMPUTE_DTW,
            INPUT_PRECISION, FAST_SIGMOID, False, BLOCK_M, BLOCK_N,
        )

    dk_ptrs = DK + (seq_start + offs_n[:, None]) * stride_dkm + h * stride_dkh + offs_dqk[None, :]
    tl.store(dk_ptrs, (dk * alpha).to(DK.dtype.element_ty), mask=k_mask)
    dv_ptrs = DV_ + (seq_start + offs_n[:, None]) * stride_dvm + h * stride_dvh + offs_dv[None, :]
    tl.store(dv_ptrs, dv.to(DV_.dtype.element_ty), mask=v_mask)
    if COMPUTE_DTW:
        kcol = tl.arange(0, NBP)
        tl.atomic_add(DTW + h * stride_dtwh + kcol, acc_tw, mask=kcol <= NUM_BOUNDARIES,
                      sem="relaxed")


def _bwd_configs():
    # (BLOCK_M, BLOCK_N, num_warps, num_stages) with BLOCK_M <= BLOCK_N; pruned to <= 4 per key. With D = 128 and
    # every option on, ptxas (sm_90a, offline, Triton 3.6 and 3.9) reports spills of ~2.8 KB (64x128, 8 warps),
    # ~0.7 KB (64x64, 8 warps), ~1.5 KB (64x64, 4 warps); at D = 64 at most ~0.6 KB: dk, dv stay in registers and
    # the dq atomics cost ~60 registers.
    # fp32 (FMA products) only fits small tiles: (32, 32, 8 warps) spills 64 B, (32, 64, 8 warps) collapses to 32
    # registers and ~80 KB of spills
    # The first kept config is the one HSTU_AUTOTUNE=quick runs: (64, 64, 8 warps) spills least at D = 128.
    table = [(64, 64, 8, 2), (64, 128, 8, 2), (64, 64, 4, 2), (32, 64, 4, 2), (16, 32, 4, 2), (32, 32, 8, 2),
             (16, 16, 4, 1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in table]


def bwd_smem(c, dqk, dv, elem):
    """Shared memory of a backward config (matches ptxas for bf16, D = 128 on sm_90; over-estimates others)."""
    bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
    return elem * (2 * bn + c.num_stages * bm) * (dqk + dv) + 4 * bm * bn + 1024


def _prune_bwd(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}  # positional arguments, then the constexprs passed by keyword
    longest = args["AUTOTUNE_LEN"]
    dqk, dv = args["BLOCK_DQK"], args["BLOCK_DV"]
    elem = args["Q"].element_size()

    def wanted(c):
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if elem == 4:  # fp32 FMA products: small tiles per thread, see triton_fwd._prune_fwd
            return (bm, bn, c.num_warps) in ((32, 32, 8), (16, 32, 4))
        if longest <= 32:
            return bn == 32 and bm == 16
        if longest <= 64 or max(dqk, dv) >= 256:
            return bn == 64
        return bn >= 64

    return prune_configs(configs, args, wanted, lambda c: bwd_smem(c, dqk, dv, elem))


hstu_attention_bwd_kernel_tuned = autotuned(
    hstu_attention_bwd_kernel, _bwd_configs(), ["AUTOTUNE_LEN", "HAS_TARGETS", "COMPUTE_DPW", "COMPUTE_DTW"],
    _prune_bwd, reset_to_zero=["DQ", "DPW", "DTW"],
)


def hstu_attention_bwd(do, q, k, v, seq_offsets, max_seq_len, max_len, *, alpha, scale, timestamps=None,
                  query_timestamps=None, pos_weight=None, time_weight=None, time_boundaries=None,
                  num_targets=None, max_attn_len=0, need_dpw=True, need_dtw=True, fp32_precision="ieee"):
    """Launch the backward kernel; returns (dq, dk, dv, d pos_weight or None, d time_weight or None).

    All of q, k, v, do contiguous; dq is accumulated in an fp32 buffer and cast to q's dtype at the end; the table
    gradients are fp32 (cast to the tables' dtypes)."""
    L, H, DQK = q.shape
    DV = v.shape[2]
    B = seq_offsets.shape[0] - 1
    dq_acc = torch.zeros((L, H, DQK), dtype=torch.float32, device=q.device)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    compute_dpw = pos_weight is not None and need_dpw
    compute_dtw = time_weight is not None and need_dtw
    dpw = (torch.zeros(pos_weight.shape, dtype=torch.float32, device=q.device) if compute_dpw
           else torch.zeros(1, dtype=torch.float32, device=q.device))
    dtw = (torch.zeros(time_weight.shape, dtype=torch.float32, device=q.device) if compute_dtw
           else torch.zeros(1, dtype=torch.float32, device=q.device))
    if L > 0 and B > 0 and max_len > 0:
        f = kernel_flags(q, timestamps, query_timestamps, pos_weight, time_weight, time_boundaries, num_targets,
                         max_attn_len, fp32_precision)
        nb = f["NUM_BOUNDARIES"]
        args = (
            q, k, v, do, dq_acc, dk, dv, seq_offsets, f["nt"], f["ts"], f["qts"], f["pw"], f["tw"], f["tb"],
            dpw, dtw,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
            dq_acc.stride(0), dq_acc.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
            f["stride_pwh"], f["stride_twh"],
            (dpw.stride(0) if compute_dpw and pos_weight.shape[0] > 1 else 0),
            (dtw.stride(0) if compute_dtw and time_weight.shape[0] > 1 else 0),
            H, float(alpha), float(scale), int(max_seq_len), int(max_attn_len), length_bucket(max_len),
        )
        meta = dict(
            DQK=DQK, DV=DV, BLOCK_DQK=max(16, next_pow2(DQK)), BLOCK_DV=max(16, next_pow2(DV)),
            HAS_TARGETS=f["HAS_TARGETS"], HAS_WINDOW=f["HAS_WINDOW"], HAS_POS=f["HAS_POS"], HAS_TIME=f["HAS_TIME"],
            NUM_BOUNDARIES=nb, NBP=max(2, next_pow2(nb + 1)), TIME_I32=f["TIME_I32"],
            COMPUTE_DPW=compute_dpw, COMPUTE_DTW=compute_dtw,
            # the exact sigmoid: ds amplifies tanh.approx's error by up to |s| (see triton_fwd's docstring)
            INPUT_PRECISION=f["INPUT_PRECISION"], FAST_SIGMOID=False,
        )
        launch(hstu_attention_bwd_kernel, hstu_attention_bwd_kernel_tuned, BWD_CONFIG_OVERRIDE, "BLOCK_N", B, H,
               max_len, args, meta)
    dq = (dq_acc * alpha).to(q.dtype) if alpha != 1.0 else dq_acc.to(q.dtype)
    dpw_out = dpw.to(pos_weight.dtype) if compute_dpw else None
    dtw_out = dtw.to(time_weight.dtype) if compute_dtw else None
    return dq, dk, dv, dpw_out, dtw_out
