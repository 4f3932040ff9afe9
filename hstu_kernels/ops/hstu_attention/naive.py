"""HSTU attention in plain PyTorch: the meaning of the op, which every fast backend must reproduce.

For one sequence of length ``n`` with ``t`` targets (``t = 0`` without ``num_targets``), ``u = n - t`` and the
position of local token ``i`` is ``p(i) = min(i, u)``: history tokens count up, every target sits at ``u``.
Query ``i`` may attend to key ``j`` when::

    valid(i, j) = (j == i) or (p(j) < p(i))                     # causal history; a target sees history + itself
                  and, if max_attn_len > 0, (j == i) or p(i) - p(j) <= max_attn_len

and the score and output are::

    s_ij  = alpha * q_i . k_j
            + pos_weight[h', p(i) - p(j) + max_seq_len - 1]                      (if pos_weight is given)
            + time_weight[h', bucket(|query_timestamps[i] - timestamps[j]|)]      (if time_weight is given)
    out_i = scale * sum_{valid j} SiLU(s_ij) * v_j,       scale defaults to 1 / max_seq_len

where ``bucket(x)`` is the number of ``time_boundaries`` that are ``<= x`` and ``h' = h`` for per-head tables
(``Hb == H``) and ``0`` for shared ones (``Hb == 1``). The mask for n = 6 with t = 2 targets (u = 4)::

          j: 0 1 2 3 4 5
    i = 0:   x . . . . .
    i = 1:   x x . . . .
    i = 2:   x x x . . .
    i = 3:   x x x x . .
    i = 4:   x x x x x .      <- target: history and itself
    i = 5:   x x x x . x      <- target: history and itself, never the other target

The computation pads the jagged batch to its longest sequence and runs in float32 (float64 for float64
inputs). Bias tables are read with ``F.embedding`` so their backward is a dense scatter-free reduction.
"""

from typing import Optional

import torch
import torch.nn.functional as F


def jagged_to_padded(values: torch.Tensor, seq_offsets: torch.Tensor, max_len: int, pad_value=0):
    """``values [L, ...]`` jagged by ``seq_offsets [B+1]`` -> (``padded [B, max_len, ...]``, ``mask [B, max_len]``)."""
    lengths = seq_offsets[1:] - seq_offsets[:-1]
    ar = torch.arange(max_len, device=values.device)
    mask = ar[None, :] < lengths[:, None]
    if values.shape[0] == 0:
        padded = values.new_full((lengths.shape[0], max_len, *values.shape[1:]), pad_value)
        return padded, mask
    idx = (seq_offsets[:-1, None].to(torch.long) + ar[None, :]).clamp_(max=values.shape[0] - 1)
    padded = values[idx]
    fill = mask.view(*mask.shape, *([1] * (values.dim() - 1)))
    return torch.where(fill, padded, torch.full_like(padded, pad_value)), mask


def naive_hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float = 1.0,
    scale: Optional[float] = None,
    timestamps: Optional[torch.Tensor] = None,
    query_timestamps: Optional[torch.Tensor] = None,
    pos_weight: Optional[torch.Tensor] = None,
    time_weight: Optional[torch.Tensor] = None,
    time_boundaries: Optional[torch.Tensor] = None,
    num_targets: Optional[torch.Tensor] = None,
    max_attn_len: int = 0,
    activation: str = "silu",
    max_len: Optional[int] = None,
) -> torch.Tensor:
    """Reference HSTU attention over a jagged batch (no argument checks: see ``hstu_attention``).

    Args:
        q, k: ``[L, H, Dqk]``; v: ``[L, H, Dv]``; any float dtype.
        seq_offsets: ``[B+1]`` int32/int64 cumulative lengths.
        timestamps, query_timestamps: ``[L]`` integer seconds; query_timestamps defaults to timestamps.
        pos_weight: ``[Hb, 2 * max_seq_len - 1]``; time_weight: ``[Hb, len(time_boundaries) + 1]``; Hb in {1, H}.
        time_boundaries: ``[nb]`` sorted integers. num_targets: ``[B]`` integers.
        activation: ``"silu"`` (HSTU) or ``"softmax"`` (the ablation: a row-wise softmax over the same masked,
            biased scores; scale then defaults to 1).
        max_len: the longest sequence, if the caller knows it (saves a host synchronisation).

    Returns:
        ``[L, H, Dv]`` in q's dtype.
    """
    if activation not in ("silu", "softmax"):
        raise ValueError(f"activation must be 'silu' or 'softmax', got {activation!r}")
    if scale is None:
        scale = 1.0 / max_seq_len if activation == "silu" else 1.0
    lengths = seq_offsets[1:] - seq_offsets[:-1]
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() > 0 else 0
    out_dtype = q.dtype
    compute = torch.promote_types(q.dtype, torch.float32)
    if q.shape[0] == 0 or max_len == 0:
        return q.new_zeros((q.shape[0], q.shape[1], v.shape[2]))

    qp, tok = jagged_to_padded(q.to(compute), seq_offsets, max_len)  # [B, N, H, D]
    kp, _ = jagged_to_padded(k.to(compute), seq_offsets, max_len)
    vp, _ = jagged_to_padded(v.to(compute), seq_offsets, max_len)
    s = alpha * torch.einsum("bihd,bjhd->bhij", qp, kp)  # [B, H, N, N]

    ar = torch.arange(max_len, device=q.device)
    u = lengths if num_targets is None else lengths - num_targets.to(lengths.dtype)
    p = torch.minimum(ar[None, :], u[:, None])  # [B, N]
    p_i, p_j = p[:, :, None], p[:, None, :]
    valid = p_j < p_i
    if max_attn_len > 0:
        valid &= p_i - p_j <= max_attn_len
    valid |= (ar[:, None] == ar[None, :])[None]
    valid &= tok[:, :, None] & tok[:, None, :]  # [B, N, N]

    if pos_weight is not None:
        # padded tokens may sit at p == max_seq_len: clamp so their (masked) lookups stay in the table
        rel = (p_i - p_j + max_seq_len - 1).clamp_(0, 2 * max_seq_len - 2)
        s = s + F.embedding(rel, pos_weight.t().to(compute)).permute(0, 3, 1, 2)
    if time_weight is not None:
        ts = timestamps if query_timestamps is None else query_timestamps
        qt, _ = jagged_to_padded(ts.to(torch.int64), seq_offsets, max_len)
        kt, _ = jagged_to_padded(timestamps.to(torch.int64), seq_offsets, max_len)
        dt = (qt[:, :, None] - kt[:, None, :]).abs()
        bucket = torch.bucketize(dt, time_boundaries.to(torch.int64), right=True)
        s = s + F.embedding(bucket, time_weight.t().to(compute)).permute(0, 3, 1, 2)

    if activation == "silu":
        a = F.silu(s) * valid[:, None].to(compute)
    else:
        a = s.masked_fill(~valid[:, None], torch.finfo(compute).min).softmax(dim=-1)
        a = a * valid[:, None].to(compute)
    out = scale * torch.einsum("bhij,bjhd->bihd", a, vp)  # [B, N, H, Dv]
    return out[tok].to(out_dtype)
