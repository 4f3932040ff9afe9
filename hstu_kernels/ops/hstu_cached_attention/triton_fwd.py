"""Triton M-FALCON kernel: candidate tokens against their user's cached history K/V (forward only).

The op is defined by ``naive.py``. One program computes one block of ``BLOCK_M`` candidates of one (user, head)::

    grid = (B * H, cdiv(most candidates of any user, BLOCK_M))

Every candidate of user ``b`` sits at the same position ``m`` (the history length), so the valid history keys
``[lo, m)`` (``lo = max(0, m - max_attn_len)`` with a window, else 0) are the same for the whole block: each
history K/V tile is loaded once per candidate block and multiplied by all its candidates at once, and the
position bias ``pos_weight[h', m - j + max_seq_len - 1]`` is one gathered row per tile, broadcast over the
candidates. The time bias is per (candidate, key): ``|query_ts_c - cache_ts_j|`` bucketed by the compare chain
shared with the attention kernel. The candidate's own (diagonal) term is a row-wise dot product added at the
end, with ``pos_weight[h', max_seq_len - 1]`` and the bucket of ``|query_ts_c - ts_c|``. fp32 accumulation,
SiLU, ``alpha``, ``scale`` fused; the output is stored in the input dtype. No backward.
"""

import torch
import triton
import triton.language as tl

from ..common.triton_device import block_rows, program_block, segment, sigmoid, tile_mask, time_bias, time_gap
from ..common.triton_host import (
    INTERPRET,
    autotuned,
    launch,
    length_bucket,
    next_pow2,
    prepare_time_boundaries,
    prune_configs,
    tile_smem,
)

# (BLOCK_M, BLOCK_N, num_warps, num_stages): tests set it to run one config without autotuning
CONFIG_OVERRIDE = None


@triton.jit(do_not_specialize=["max_seq_len", "max_attn_len", "AUTOTUNE_HIST", "AUTOTUNE_CANDS"])
def hstu_cached_attention_fwd_kernel(
    Q, K, V, KC, VC, Out, CandOffsets, CacheOffsets, TS, QTS, CTS, PW, TW, TB,
    stride_qm, stride_qh, stride_km, stride_kh, stride_vm, stride_vh,
    stride_kcm, stride_kch, stride_vcm, stride_vch, stride_om, stride_oh, stride_pwh, stride_twh,
    H, alpha, scale, max_seq_len, max_attn_len, AUTOTUNE_HIST, AUTOTUNE_CANDS,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr,
    NUM_BOUNDARIES: tl.constexpr, TIME_I32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    FAST_SIGMOID: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b, h, c0, nc, start_m = program_block(CandOffsets, tl.program_id(1), H, BLOCK_M)
    if start_m >= nc:
        return
    h0, m = segment(CacheOffsets, b)

    offs_m, row_ok, _ = block_rows(start_m, nc, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    qk_mask = tile_mask(row_ok, offs_dqk, DQK, BLOCK_DQK)
    v_rows = tile_mask(row_ok, offs_dv, DV, BLOCK_DV)
    q = tl.load(Q + (c0 + offs_m[:, None]) * stride_qm + h * stride_qh + offs_dqk[None, :], mask=qk_mask, other=0.0)
    PW_h = PW + h * stride_pwh
    TW_h = TW + h * stride_twh
    if HAS_TIME:
        tq = tl.load(QTS + c0 + offs_m, mask=row_ok, other=0)
    else:
        tq = offs_m  # unused

    if HAS_WINDOW:
        lo = tl.maximum(m - max_attn_len, 0)
    else:
        lo = 0
    KC_bh = KC + h0 * stride_kcm + h * stride_kch
    VC_bh = VC + h0 * stride_vcm + h * stride_vch
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start_n in range((lo // BLOCK_N) * BLOCK_N, m, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_hist = offs_n < m
        col_ok = in_hist & (offs_n >= lo)
        # out-of-window keys are masked for every candidate alike: loaded as 0, they add nothing even where the
        # cache holds NaN or Inf
        k_mask = tile_mask(col_ok, offs_dqk, DQK, BLOCK_DQK)
        kc = tl.load(KC_bh + offs_n[:, None] * stride_kcm + offs_dqk[None, :], mask=k_mask, other=0.0)
        s = tl.dot(q, tl.trans(kc), input_precision=INPUT_PRECISION) * alpha
        if HAS_POS:
            # every candidate sits at position m: one table row per tile, broadcast over the candidates
            rel = m - offs_n + (max_seq_len - 1)
            s += tl.load(PW_h + rel, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_TIME:
            tk = tl.load(CTS + h0 + offs_n, mask=in_hist, other=0)
            s += time_bias(time_gap(tq[:, None], tk[None, :], TIME_I32), TW_h, TB, NUM_BOUNDARIES, TIME_I32)
        # where on the product, not a zero gate: a masked pair's time bias may be +-Inf (0 * Inf = NaN)
        a = tl.where(col_ok[None, :], s * sigmoid(s, FAST_SIGMOID), 0.0)
        v_mask = tile_mask(col_ok, offs_dv, DV, BLOCK_DV)
        vc = tl.load(VC_bh + offs_n[:, None] * stride_vcm + offs_dv[None, :], mask=v_mask, other=0.0)
        # scaled before the cast: fp16 keeps SiLU(s) * scale, not SiLU(s), below its 65504 limit
        acc += tl.dot((a * scale).to(vc.dtype), vc, input_precision=INPUT_PRECISION)

    # the candidate's own term (always valid)
    k = tl.load(K + (c0 + offs_m[:, None]) * stride_km + h * stride_kh + offs_dqk[None, :], mask=qk_mask, other=0.0)
    s_self = tl.sum(q.to(tl.float32) * k.to(tl.float32), axis=1) * alpha
    if HAS_POS:
        s_self += tl.load(PW_h + max_seq_len - 1).to(tl.float32)
    if HAS_TIME:
        tc = tl.load(TS + c0 + offs_m, mask=row_ok, other=0)
        s_self += time_bias(time_gap(tq, tc, TIME_I32), TW_h, TB, NUM_BOUNDARIES, TIME_I32)
    a_self = s_self * sigmoid(s_self, FAST_SIGMOID)
    v = tl.load(V + (c0 + offs_m[:, None]) * stride_vm + h * stride_vh + offs_dv[None, :], mask=v_rows, other=0.0)
    acc += (a_self * scale)[:, None] * v.to(tl.float32)

    out = acc.to(Out.dtype.element_ty)
    tl.store(Out + (c0 + offs_m[:, None]) * stride_om + h * stride_oh + offs_dv[None, :], out, mask=v_rows)


def _configs():
    table = [(128, 64, 8, 3), (128, 32, 8, 2), (64, 64, 4, 3), (64, 32, 4, 2), (64, 32, 8, 2), (32, 32, 4, 2),
             (16, 32, 4, 2), (16, 64, 4, 3)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in table]


def _prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    hist, cands = args["AUTOTUNE_HIST"], args["AUTOTUNE_CANDS"]
    dqk, dv = args["BLOCK_DQK"], args["BLOCK_DV"]
    elem = args["Q"].element_size()

    def wanted(c):
        bm, bn, warps = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps
        if elem == 4:  # fp32 "ieee" products: small tiles only (see the attention kernel's pruning)
            return (bm, bn, warps) in ((64, 32, 8), (32, 32, 4), (16, 32, 4))
        if cands <= 16:  # one or a few candidates per user: smallest candidate blocks
            return bm == 16
        if cands <= 32:
            return bm == 32 or (bm == 16 and bn == 32)
        if max(dqk, dv) >= 256:
            return bm == 64 and c.num_stages == 2 and warps == 4
        if hist <= 32:
            return bn == 32 and bm in (64, 128)
        if max(dqk, dv) >= 128:  # (64, 64, 4 warps) spills at D = 128 with Triton 3.6
            return bm == 128 or (bm == 64 and warps == 8)
        return bm in (64, 128) and (bn == 64 or bm == 128)

    return prune_configs(configs, args, wanted, lambda c: tile_smem(c, dqk, dv, elem))


hstu_cached_attention_fwd_kernel_tuned = autotuned(
    hstu_cached_attention_fwd_kernel, _configs(), ["AUTOTUNE_HIST", "AUTOTUNE_CANDS"], _prune
)


def hstu_cached_attention_fwd(q, k, v, cand_offsets, k_cache, v_cache, cache_offsets, max_seq_len, max_cands,
                              max_hist, *, alpha, scale, timestamps=None, query_timestamps=None,
                              cache_timestamps=None, pos_weight=None, time_weight=None, time_boundaries=None,
                              max_attn_len=0, fp32_precision="ieee"):
    """Launch the kernel. Tensors need a unit last-dim stride; returns ``[C, H, Dv]`` in q's dtype."""
    C, H, DQK = q.shape
    DV = v.shape[2]
    B = cand_offsets.shape[0] - 1
    out = torch.empty((C, H, DV), dtype=q.dtype, device=q.device)
    if C == 0 or B == 0 or max_cands == 0:
        return out.zero_() if out.numel() else out
    dummy = q.new_zeros(1)
    has_time = time_weight is not None
    if has_time:
        qts = timestamps if query_timestamps is None else query_timestamps
        time_i32 = all(t.dtype == torch.int32 for t in (timestamps, qts, cache_timestamps))
        ts, qts, cts = timestamps.contiguous(), qts.contiguous(), cache_timestamps.contiguous()
        tb, tw = prepare_time_boundaries(time_boundaries, time_i32), time_weight.contiguous()
    else:
        time_i32 = False
        ts = qts = cts = tb = tw = dummy
    pw = pos_weight.contiguous() if pos_weight is not None else dummy
    args = (
        q, k, v, k_cache, v_cache, out, cand_offsets.contiguous(), cache_offsets.contiguous(), ts, qts, cts, pw, tw, tb,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1), out.stride(0), out.stride(1),
        pw.stride(0) if pos_weight is not None and pos_weight.shape[0] > 1 else 0,
        tw.stride(0) if has_time and time_weight.shape[0] > 1 else 0,
        H, float(alpha), float(scale), int(max_seq_len), int(max_attn_len),
        length_bucket(max_hist), min(length_bucket(max_cands), 128),
    )
    meta = dict(
        DQK=DQK, DV=DV, BLOCK_DQK=max(16, next_pow2(DQK)), BLOCK_DV=max(16, next_pow2(DV)),
        HAS_WINDOW=max_attn_len > 0, HAS_POS=pos_weight is not None, HAS_TIME=has_time,
        NUM_BOUNDARIES=time_boundaries.shape[0] if has_time else 0, TIME_I32=time_i32,
        INPUT_PRECISION=fp32_precision if q.dtype == torch.float32 else "tf32",
        FAST_SIGMOID=(q.dtype == torch.bfloat16) and not INTERPRET,
    )
    launch(hstu_cached_attention_fwd_kernel, hstu_cached_attention_fwd_kernel_tuned, CONFIG_OVERRIDE, "BLOCK_M", B, H,
           max_cands, args, meta)
    return out
