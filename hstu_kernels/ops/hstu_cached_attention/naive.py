"""Cached (M-FALCON) HSTU attention in plain PyTorch: the meaning of the op, which every fast backend must reproduce.

Candidate scoring appends a user's candidates to the user's history as targets. With ``hstu_attention`` on
history + candidates and ``num_targets`` = the number of candidates, a candidate's row sees the history (within
the window) and itself, never another candidate. This op computes exactly those candidate rows from the history's
cached keys and values, so the history is encoded once and the candidates can be scored in any grouping.

For user ``b`` with history length ``m`` (``0 <= m <= max_seq_len - 1``; 0 is a cold-start user) and candidate
``c`` of that user, every history token ``j`` sits at position ``j`` and every candidate at ``u = m``::

    valid(c, j) = (max_attn_len == 0) or (m - j <= max_attn_len)        # history keys j = 0 .. m-1

    s_cj    = alpha * q_c . k_cache_j
              + pos_weight[h', m - j + max_seq_len - 1]                                (if pos_weight)
              + time_weight[h', bucket(|query_timestamps[c] - cache_timestamps[j]|)]    (if time_weight)
    s_cc    = alpha * q_c . k_c
              + pos_weight[h', max_seq_len - 1]
              + time_weight[h', bucket(|query_timestamps[c] - timestamps[c]|)]
    out_c   = scale * (sum_{valid j} SiLU(s_cj) * v_cache_j + SiLU(s_cc) * v_c),   scale defaults to 1 / max_seq_len

with ``bucket``, ``h'`` and the tables as in ``hstu_attention`` (``hstu_kernels/ops/hstu_attention/naive.py``);
``query_timestamps`` defaults to ``timestamps``. The self term is always valid (the diagonal survives the window).

Non-finite values follow ``hstu_attention``'s contract: a masked (out-of-window) history key contributes exactly
nothing, whatever it holds; a non-finite value a candidate sees makes its output non-finite.

The computation pads histories to ``[B, Mh]`` and candidates to ``[B, Cmax]``, scores ``[B, H, Cmax, Mh]`` against
the history plus a diagonal self term ``[B, H, Cmax]``, and runs in float32 (float64 for float64 inputs).
"""

from typing import Optional

import torch
import torch.nn.functional as F

from ..common.bias import bias_lookup
from ..common.jagged import jagged_to_padded


def naive_hstu_cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cand_offsets: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float = 1.0,
    scale: Optional[float] = None,
    timestamps: Optional[torch.Tensor] = None,
    query_timestamps: Optional[torch.Tensor] = None,
    cache_timestamps: Optional[torch.Tensor] = None,
    pos_weight: Optional[torch.Tensor] = None,
    time_weight: Optional[torch.Tensor] = None,
    time_boundaries: Optional[torch.Tensor] = None,
    max_attn_len: int = 0,
    max_cands: Optional[int] = None,
    max_hist: Optional[int] = None,
) -> torch.Tensor:
    """Reference cached attention over jagged candidates and a jagged history cache (no argument checks: see
    ``hstu_cached_attention``).

    Args:
        q, k: ``[C, H, Dqk]``; v: ``[C, H, Dv]``: the candidates' own projections, jagged by ``cand_offsets [B+1]``.
        k_cache: ``[Lh, H, Dqk]``; v_cache: ``[Lh, H, Dv]``: the histories, jagged by ``cache_offsets [B+1]``.
        timestamps, query_timestamps: ``[C]``; cache_timestamps: ``[Lh]``: integer seconds.
        pos_weight, time_weight, time_boundaries, max_attn_len, alpha, scale: as in ``hstu_attention``.
        max_cands, max_hist: the most candidates / history tokens of any user, if the caller knows them (saves
            host synchronisations).

    Returns:
        ``[C, H, Dv]`` in q's dtype.
    """
    if scale is None:
        scale = 1.0 / max_seq_len
    C, H, Dv = q.shape[0], q.shape[1], v.shape[2]
    n_c = cand_offsets[1:] - cand_offsets[:-1]
    m = (cache_offsets[1:] - cache_offsets[:-1]).to(torch.int64)
    if max_cands is None:
        max_cands = int(n_c.max()) if n_c.numel() > 0 else 0
    if max_hist is None:
        max_hist = int(m.max()) if m.numel() > 0 else 0
    if C == 0 or max_cands == 0:
        return q.new_zeros((C, H, Dv))
    compute = torch.promote_types(q.dtype, torch.float32)
    dev = q.device
    qp, cand = jagged_to_padded(q.to(compute), cand_offsets, max_cands)  # [B, Cm, H, D], [B, Cm]
    kp, _ = jagged_to_padded(k.to(compute), cand_offsets, max_cands)
    vp, _ = jagged_to_padded(v.to(compute), cand_offsets, max_cands)
    zero = torch.zeros((), dtype=compute, device=dev)

    # the self term: [B, Cm, H]
    s_self = alpha * (qp * kp).sum(-1)
    qts = None
    if time_weight is not None:
        ts_c = jagged_to_padded(timestamps, cand_offsets, max_cands)[0].to(torch.int64)  # [B, Cm]
        qts = ts_c if query_timestamps is None else jagged_to_padded(query_timestamps, cand_offsets, max_cands)[0]
        qts = qts.to(torch.int64)
        tb = time_boundaries.to(torch.int64)
    if pos_weight is not None:
        s_self = s_self + pos_weight.to(compute)[:, max_seq_len - 1]  # [Hb] broadcasts over H
    if time_weight is not None:
        bucket = torch.bucketize((qts - ts_c).abs(), tb, right=True)  # [B, Cm]
        s_self = s_self + bias_lookup(time_weight.to(compute), bucket).permute(0, 2, 1)  # [B, Cm, Hb]
    out = F.silu(s_self)[..., None] * vp  # [B, Cm, H, Dv]

    if max_hist > 0:
        kc, hist = jagged_to_padded(k_cache.to(compute), cache_offsets, max_hist)  # [B, Mh, H, D], [B, Mh]
        vc, _ = jagged_to_padded(v_cache.to(compute), cache_offsets, max_hist)
        s = alpha * torch.einsum("bchd,bjhd->bhcj", qp, kc)  # [B, H, Cm, Mh]
        j = torch.arange(max_hist, device=dev)
        dist = m[:, None] - j[None, :]  # [B, Mh]: p(c) - p(j)
        valid = hist
        if max_attn_len > 0:
            valid = valid & (dist <= max_attn_len)
        if pos_weight is not None:
            # padded keys have dist <= 0: clamp so their (masked) lookups stay in the table
            rel = (dist + max_seq_len - 1).clamp_(0, 2 * max_seq_len - 2)
            s = s + bias_lookup(pos_weight.to(compute), rel[:, None, :])  # [B, Hb, 1, Mh]
        if time_weight is not None:
            cts, _ = jagged_to_padded(cache_timestamps, cache_offsets, max_hist)
            dt = (qts[:, :, None] - cts.to(torch.int64)[:, None, :]).abs()  # [B, Cm, Mh]
            s = s + bias_lookup(time_weight.to(compute), torch.bucketize(dt, tb, right=True))
        a = torch.where(valid[:, None, None, :], F.silu(s), zero)
        # where, not a multiply by the mask: masked (padded or out-of-window) history values, even NaN, must not
        # leak through a zero weight; validity is the same for every candidate of a user
        vc = torch.where(valid[:, :, None, None], vc, zero)
        out = out + torch.einsum("bhcj,bjhd->bchd", a, vc)
    return (scale * out[cand]).to(q.dtype)
