"""Fused Triton HSTU attention: forward kernel, the attention-only device helpers the backward shares, configs,
and the host launcher.

The op is defined by ``naive.py``. One program computes one query block of one (sequence, head) pair::

    grid = (B * H, cdiv(longest, BLOCK_M))       # B*H on axis 0 (no 65535 limit); heaviest query blocks first

and loops over the key blocks that hold at least one valid pair, never padding a sequence and never storing
anything N x N. With ``u = n - num_targets`` and ``p(i) = min(i, u)``, a valid key of query ``i`` is ``j < p(i)``
(within the window ``p(i) - j <= max_attn_len``) or ``j == i``. So the key range of the query block
``[m0, m1)`` is ``[lo, m1)`` (``lo = max(0, p(m0) - max_attn_len)`` with a window, else 0) when the block starts
in the history (``m0 <= u``), and ``[lo, u)`` plus the diagonal block ``[m0, m1)`` when it holds targets only.
Key tiles inside ``[ceil(p(m1 - 1) - max_attn_len), floor(p(m0)))`` are valid everywhere and skip the mask
(``MASKED=False``); the others compute it from indices, in a single loop over all masked tiles (two loops in
all keep Triton 3.6 from serialising the wgmma pipeline). Tiles outside the ranges are never visited.

Bias in-kernel: ``pos_weight[h', min(p(i) - p(j) + max_seq_len - 1, 2 max_seq_len - 2)]`` gathered per score
(the clamp keeps the padded rows of a partial block inside the table), and the time bias as a chain of
``NUM_BOUNDARIES`` (<= 16, constexpr) compares of ``|qts_i - ts_j|`` against the sorted boundaries, each
picking the next ``time_weight`` entry (no gather). Int32 timestamps take a 32-bit path (differences compared
as uint32 against boundaries the host clamps to [0, 2^32 - 1]); int64 timestamps stay 64-bit (exact, slower).
In masked tiles the mask selects ``a = SiLU(s)`` (a ``where``, so a masked pair adds nothing even where its score
is +-Inf); masked tiles multiply the finite values only and flag the rows that see a non-finite value, which
end as NaN (``naive.py`` states the contract). ``a * scale`` is cast to the value dtype before the second
product, so fp16 overflows only where ``SiLU(s) * scale`` passes 65504.

fp32 accumulation, SiLU, ``alpha``, ``scale`` fused; the output is stored in the input dtype. The bf16 forward on a
GPU uses ``tanh.approx.f32`` for the sigmoid (one MUFU op; error ~2.5e-4, below bf16 rounding of the output); fp32,
fp16 and every backward use ``tl.sigmoid`` (the backward's ``ds = dA sig (1 + s (1 - sig))`` amplifies the
approximation's error by up to |s|, past the bias-table gradients' tolerance at score spreads of ~10).
Autotuning (GPU only) is keyed on the bucketed longest length, head dims, flags and dtypes, over a pruned set
(<= 3 forward configs) that fits the device's shared memory; ``HSTU_AUTOTUNE=quick`` keeps only the first config
of that set (no timing). Loads are software-pipelined (``cp.async``) only when Triton sees 16-element-aligned
strides: true for head dims that are multiples of 16.
"""

import torch
import triton
import triton.language as tl

from ..common.triton_device import (
    block_rows,
    history_length,
    program_block,
    sigmoid,
    tile_mask,
    time_bias,
    time_gap,
)
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
FWD_CONFIG_OVERRIDE = None


# ---------------------------------------------------------------------------------------------------------------
# attention-only device helpers (shared with triton_bwd)
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _valid_mask(pq2, pk2, iq2, ik2, max_attn_len, HAS_WINDOW: tl.constexpr):
    """valid(i, j) = (p(j) < p(i) [and p(i) - p(j) <= max_attn_len]) or i == j; 2-D broadcastable inputs.

    Keys j >= n are invalid by construction (p(j) = u >= p(i) and j != i for every real row i)."""
    valid = pk2 < pq2
    if HAS_WINDOW:
        valid = valid & (pq2 - pk2 <= max_attn_len)
    return valid | (iq2 == ik2)


@triton.jit
def _pos_bias(pq2, pk2, PW_h, max_seq_len, valid, MASKED: tl.constexpr):
    rel = tl.minimum(pq2 - pk2 + (max_seq_len - 1), 2 * max_seq_len - 2)
    if MASKED:
        return tl.load(PW_h + rel, mask=valid, other=0.0).to(tl.float32)
    else:
        return tl.load(PW_h + rel).to(tl.float32)


# ---------------------------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _fwd_tile(
    acc, q, pq, tq, offs_m, start_n, n, u,
    K_bh, V_bh, VB_bh, stride_km, stride_vm, TS_b, PW_h, TW_h, TB,
    alpha, scale, max_seq_len, max_attn_len,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr,
    NUM_BOUNDARIES: tl.constexpr, TIME_I32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    FAST_SIGMOID: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    col_ok = offs_n < n
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    k_mask = tile_mask(col_ok, offs_dqk, DQK, BLOCK_DQK)
    # keys whose value row holds a NaN or Inf load as zeros (a masked pair's 0 * NaN would poison its row); the
    # epilogue sets the rows that see one to NaN
    key_bad = tl.load(VB_bh + offs_n, mask=col_ok, other=0)
    v_mask = tile_mask(col_ok & (key_bad == 0), offs_dv, DV, BLOCK_DV)
    k = tl.load(K_bh + offs_n[:, None] * stride_km + offs_dqk[None, :], mask=k_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * alpha
    pk = tl.minimum(offs_n, u)
    if MASKED:
        valid = _valid_mask(pq[:, None], pk[None, :], offs_m[:, None], offs_n[None, :], max_attn_len, HAS_WINDOW)
    else:
        valid = None
    if HAS_POS:
        s += _pos_bias(pq[:, None], pk[None, :], PW_h, max_seq_len, valid, MASKED)
    if HAS_TIME:
        tk = tl.load(TS_b + offs_n, mask=col_ok, other=0)
        s += time_bias(time_gap(tq[:, None], tk[None, :], TIME_I32), TW_h, TB, NUM_BOUNDARIES, TIME_I32)
    a = s * sigmoid(s, FAST_SIGMOID)
    if MASKED:
        # a masked pair adds nothing, whatever its values: where on the product, not a zero gate (s may be +-Inf
        # from a masked key or bias entry, and 0 * Inf = NaN)
        a = tl.where(valid, a, 0.0)
    v = tl.load(V_bh + offs_n[:, None] * stride_vm + offs_dv[None, :], mask=v_mask, other=0.0)
    # scaled before the cast: fp16 keeps SiLU(s) * scale, not SiLU(s), below its 65504 limit
    acc += tl.dot((a * scale).to(v.dtype), v, input_precision=INPUT_PRECISION)
    return acc


@triton.jit(do_not_specialize=["max_seq_len", "max_attn_len", "AUTOTUNE_LEN"])
def hstu_attention_fwd_kernel(
    Q, K, V, VBad, VBadCum, Out, SeqOffsets, NumTargets, TS, QTS, PW, TW, TB,
    stride_qm, stride_qh, stride_km, stride_kh, stride_vm, stride_vh, stride_om, stride_oh,
    stride_pwh, stride_twh, stride_vbh, stride_vch,
    H, alpha, scale, max_seq_len, max_attn_len, AUTOTUNE_LEN,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr,
    NUM_BOUNDARIES: tl.constexpr, TIME_I32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    FAST_SIGMOID: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # the longest (most expensive) query blocks first
    b, h, seq_start, n, start_m = program_block(SeqOffsets, tl.num_programs(1) - 1 - tl.program_id(1), H, BLOCK_M)
    if start_m >= n:
        return
    u = history_length(NumTargets, b, n, HAS_TARGETS)
    offs_m, row_ok, end_m = block_rows(start_m, n, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_mask = tile_mask(row_ok, offs_dqk, DQK, BLOCK_DQK)
    Q_bh = Q + seq_start * stride_qm + h * stride_qh
    q = tl.load(Q_bh + offs_m[:, None] * stride_qm + offs_dqk[None, :], mask=q_mask, other=0.0)
    pq = tl.minimum(offs_m, u)
    K_bh = K + seq_start * stride_km + h * stride_kh
    V_bh = V + seq_start * stride_vm + h * stride_vh
    VB_bh = VBad + h * stride_vbh + seq_start
    TS_b = TS + seq_start
    PW_h = PW + h * stride_pwh
    TW_h = TW + h * stride_twh
    if HAS_TIME:
        tq = tl.load(QTS + seq_start + offs_m, mask=row_ok, other=0)
    else:
        tq = offs_m  # unused

    # key ranges (local indices): history [lo, hi1) and, for a block of targets only, its diagonal block
    p_min = tl.minimum(start_m, u)
    p_max = tl.minimum(end_m - 1, u)
    if HAS_WINDOW:
        lo = tl.maximum(p_min - max_attn_len, 0)
        full_lo = tl.maximum(p_max - max_attn_len, 0)
    else:
        lo = 0
        full_lo = 0
    hi1 = tl.where(start_m <= u, end_m, u)
    lo_al = (lo // BLOCK_N) * BLOCK_N
    full_lo = tl.maximum(((full_lo + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, lo_al)
    full_hi = (p_min // BLOCK_N) * BLOCK_N
    a_end = tl.where(full_lo < full_hi, full_lo, lo_al)
    b_end = tl.where(full_lo < full_hi, full_hi, lo_al)
    c_end = b_end + tl.maximum(((hi1 - b_end + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, 0)

    # Masked tiles: the window edge [lo_al, a_end), the causal edge [b_end, hi1) and, for a block of targets
    # only, its own diagonal [d_lo, end_m) (keys the history ranges have not covered). They run as ONE loop over
    # the three ranges laid end to end: with Triton 3.6, three masked loops beside the unmasked one made ptxas
    # serialise the wgmma pipeline (C7515); two loops do not.
    n_a = (a_end - lo_al) // BLOCK_N
    n_c = tl.maximum(tl.cdiv(hi1 - b_end, BLOCK_N), 0)
    if HAS_TARGETS:
        d_lo = tl.where(start_m > u, tl.maximum(start_m, c_end), end_m)
        n_d = tl.maximum(tl.cdiv(end_m - d_lo, BLOCK_N), 0)
    else:
        d_lo = end_m
        n_d = 0
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for t in range(0, n_a + n_c + n_d):
        start_n = tl.where(t < n_a, lo_al + t * BLOCK_N,
                           tl.where(t < n_a + n_c, b_end + (t - n_a) * BLOCK_N, d_lo + (t - n_a - n_c) * BLOCK_N))
        acc = _fwd_tile(
            acc, q, pq, tq, offs_m, start_n, n, u, K_bh, V_bh, VB_bh, stride_km, stride_vm, TS_b, PW_h, TW_h, TB,
            alpha, scale, max_seq_len, max_attn_len, DQK, DV, BLOCK_DQK, BLOCK_DV, HAS_WINDOW, HAS_POS, HAS_TIME,
            NUM_BOUNDARIES, TIME_I32, INPUT_PRECISION, FAST_SIGMOID, True, BLOCK_N,
        )
    for start_n in range(a_end, b_end, BLOCK_N):  # fully valid: no mask
        acc = _fwd_tile(
            acc, q, pq, tq, offs_m, start_n, n, u, K_bh, V_bh, VB_bh, stride_km, stride_vm, TS_b, PW_h, TW_h, TB,
            alpha, scale, max_seq_len, max_attn_len, DQK, DV, BLOCK_DQK, BLOCK_DV, HAS_WINDOW, HAS_POS, HAS_TIME,
            NUM_BOUNDARIES, TIME_I32, INPUT_PRECISION, FAST_SIGMOID, False, BLOCK_N,
        )

    o_mask = tile_mask(row_ok, offs_dv, DV, BLOCK_DV)
    O_bh = Out + seq_start * stride_om + h * stride_oh
    # a row that sees a key with a non-finite value: its history keys [lo_i, p(i)) (prefix counts of such keys)
    # and its own key; the tiles loaded those values as zeros, so the NaN is set here
    if HAS_WINDOW:
        lo_i = tl.maximum(pq - max_attn_len, 0)
    else:
        lo_i = tl.zeros_like(pq)
    VC_bh = VBadCum + h * stride_vch + seq_start
    seen_bad = tl.load(VC_bh + pq, mask=row_ok, other=0) - tl.load(VC_bh + lo_i, mask=row_ok, other=0)
    own_bad = tl.load(VBad + h * stride_vbh + seq_start + offs_m, mask=row_ok, other=0)
    out = tl.where(((seen_bad > 0) | (own_bad != 0))[:, None], float("nan"), acc)
    out = out.to(Out.dtype.element_ty)
    tl.store(O_bh + offs_m[:, None] * stride_om + offs_dv[None, :], out, mask=o_mask)


# ---------------------------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------------------------
def _fwd_configs():
    # (BLOCK_M, BLOCK_N, num_warps, num_stages); pruned to <= 3 per key so first-call tuning stays in seconds
    table = [(128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 32, 4, 3), (32, 32, 4, 2),
             (64, 64, 4, 2), (64, 32, 4, 2), (64, 32, 8, 2), (16, 16, 4, 1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in table]


def _prune_fwd(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}  # positional arguments, then the constexprs passed by keyword
    longest = args["AUTOTUNE_LEN"]
    dqk, dv = args["BLOCK_DQK"], args["BLOCK_DV"]
    elem = args["Q"].element_size()
    big = max(dqk, dv) >= 256 or elem == 4

    def wanted(c):
        bm, bn, stages = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages
        if elem == 4:
            # fp32 "ieee" products are FMA loops: with more than ~16 elements of a [BM, BN] tile per thread, ptxas
            # (sm_90) falls back to 32 registers and spills ~60 KB; these two do not spill at D = 128
            return (bm, bn, c.num_warps) in ((64, 32, 8), (32, 32, 4)) and (longest > 32 or bm == 32)
        if longest <= 32:  # tiny sequences: the smallest blocks only
            return bm == 32
        if big:  # D = 256: fewer stages, smaller tiles (registers and shared memory)
            return stages == 2 and bm == 64 and c.num_warps == 4
        if longest <= 64:
            return bm == 64 and stages == 3
        return (bm, bn) in ((128, 64), (128, 128), (64, 64)) and stages >= 2 and not (bm == 64 and stages == 2)

    return prune_configs(configs, args, wanted, lambda c: tile_smem(c, dqk, dv, elem))


hstu_attention_fwd_kernel_tuned = autotuned(
    hstu_attention_fwd_kernel, _fwd_configs(), ["AUTOTUNE_LEN", "HAS_TARGETS"], _prune_fwd
)


# ---------------------------------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------------------------------
def kernel_flags(q, timestamps, query_timestamps, pos_weight, time_weight, time_boundaries, num_targets,
                 max_attn_len, fp32_precision):
    """The constexpr flags and the auxiliary pointers both kernels take."""
    dummy = q.new_zeros(1)
    has_time = time_weight is not None
    time_i32 = bool(
        has_time and timestamps.dtype == torch.int32
        and (query_timestamps is None or query_timestamps.dtype == torch.int32)
    )
    if has_time:
        ts = timestamps.contiguous()
        qts = ts if query_timestamps is None else query_timestamps.contiguous()
        tb = prepare_time_boundaries(time_boundaries, time_i32)
        tw = time_weight.contiguous()
    else:
        ts = qts = tb = tw = dummy
    pw = pos_weight.contiguous() if pos_weight is not None else dummy
    nt = num_targets.contiguous() if num_targets is not None else dummy
    fp32 = q.dtype == torch.float32
    return dict(
        ts=ts, qts=qts, tb=tb, tw=tw, pw=pw, nt=nt,
        stride_pwh=(pw.stride(0) if pos_weight is not None and pos_weight.shape[0] > 1 else 0),
        stride_twh=(tw.stride(0) if has_time and time_weight.shape[0] > 1 else 0),
        HAS_TARGETS=num_targets is not None,
        HAS_WINDOW=max_attn_len > 0,
        HAS_POS=pos_weight is not None,
        HAS_TIME=has_time,
        NUM_BOUNDARIES=(time_boundaries.shape[0] if has_time else 0),
        TIME_I32=time_i32,
        INPUT_PRECISION=(fp32_precision if fp32 else "tf32"),
        # tanh.approx (abs err ~2.5e-4 on the sigmoid) only where it stays below the output rounding: the bf16
        # forward (the backward turns it off, see the module docstring)
        FAST_SIGMOID=(q.dtype == torch.bfloat16) and not INTERPRET,
    )


def nonfinite_rows(v: torch.Tensor):
    """``v [L, H, D]`` -> (int8 ``[H, L]``: 1 where a value row holds a NaN or Inf; int32 ``[H, L + 1]``: their
    exclusive prefix counts). Head-major, so each tile reads a contiguous run. The forward loads such rows as
    zeros and sets the rows that see one (a prefix-count difference) to NaN."""
    bad = (~torch.isfinite(v)).any(dim=-1).t().contiguous()
    counts = torch.zeros((v.shape[1], v.shape[0] + 1), dtype=torch.int32, device=v.device)
    torch.cumsum(bad, dim=1, dtype=torch.int32, out=counts[:, 1:])
    return bad.to(torch.int8), counts


def hstu_attention_fwd(q, k, v, seq_offsets, max_seq_len, max_len, *, alpha, scale, timestamps=None,
                  query_timestamps=None, pos_weight=None, time_weight=None, time_boundaries=None,
                  num_targets=None, max_attn_len=0, fp32_precision="ieee"):
    """Launch the forward kernel. q, k [L, H, Dqk], v [L, H, Dv] contiguous; returns [L, H, Dv] in q's dtype."""
    L, H, DQK = q.shape
    DV = v.shape[2]
    B = seq_offsets.shape[0] - 1
    out = torch.empty((L, H, DV), dtype=q.dtype, device=q.device)
    if L == 0 or B == 0 or max_len == 0:
        return out.zero_() if out.numel() else out
    f = kernel_flags(q, timestamps, query_timestamps, pos_weight, time_weight, time_boundaries, num_targets,
                     max_attn_len, fp32_precision)
    v_bad, v_bad_cum = nonfinite_rows(v)
    args = (
        q, k, v, v_bad, v_bad_cum, out, seq_offsets, f["nt"], f["ts"], f["qts"], f["pw"], f["tw"], f["tb"],
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        f["stride_pwh"], f["stride_twh"], v_bad.stride(0), v_bad_cum.stride(0),
        H, float(alpha), float(scale), int(max_seq_len), int(max_attn_len), length_bucket(max_len),
    )
    meta = dict(
        DQK=DQK, DV=DV, BLOCK_DQK=max(16, next_pow2(DQK)), BLOCK_DV=max(16, next_pow2(DV)),
        HAS_TARGETS=f["HAS_TARGETS"], HAS_WINDOW=f["HAS_WINDOW"], HAS_POS=f["HAS_POS"], HAS_TIME=f["HAS_TIME"],
        NUM_BOUNDARIES=f["NUM_BOUNDARIES"], TIME_I32=f["TIME_I32"], INPUT_PRECISION=f["INPUT_PRECISION"],
        FAST_SIGMOID=f["FAST_SIGMOID"],
    )
    launch(hstu_attention_fwd_kernel, hstu_attention_fwd_kernel_tuned, FWD_CONFIG_OVERRIDE, "BLOCK_M", B, H, max_len,
           args, meta)
    return out
