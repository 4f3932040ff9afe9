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

Non-finite values: a masked pair contributes exactly nothing, whatever its q, k, v, timestamps or bias entries
hold (NaN and Inf included), so a row's output depends only on the pairs it sees. A non-finite value in a pair
a row sees propagates: that row's output is non-finite (here the elements the value enters, NaN or +-Inf as
IEEE arithmetic gives; the fused forward sets a row that sees a non-finite value to NaN in full). Gradients are exact for finite inputs; a sequence
holding a non-finite input may get non-finite gradients anywhere in it. fp16 inputs on the fast backends keep
``SiLU(s) * scale`` in fp16 before the second product, so it must stay below 65504.

The computation pads the jagged batch to its longest sequence and runs in float32 (float64 for float64
inputs); the bias tables are read by ``common.bias.bias_lookup`` (a gradient without atomics).
"""

from typing import Optional

import torch
import torch.nn.functional as F

from ..common.bias import bias_lookup
from ..common.jagged import jagged_to_padded


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
    max_len: Optional[int] = None,
) -> torch.Tensor:
    """Reference HSTU attention over a jagged batch (no argument checks: see ``hstu_attention``).

    Args:
        q, k: ``[L, H, Dqk]``; v: ``[L, H, Dv]``; any float dtype.
        seq_offsets: ``[B+1]`` int32/int64 cumulative lengths.
        timestamps, query_timestamps: ``[L]`` integer seconds; query_timestamps defaults to timestamps.
        pos_weight: ``[Hb, 2 * max_seq_len - 1]``; time_weight: ``[Hb, len(time_boundaries) + 1]``; Hb in {1, H}.
        time_boundaries: ``[nb]`` sorted integers. num_targets: ``[B]`` integers.
        max_len: the longest sequence, if the caller knows it (saves a host synchronisation).

    Returns:
        ``[L, H, Dv]`` in q's dtype.
    """
    return run_on_padded(
        naive_hstu_attention_padded, q, k, v, seq_offsets, max_seq_len, alpha=alpha, scale=scale,
        timestamps=timestamps, query_timestamps=query_timestamps, pos_weight=pos_weight, time_weight=time_weight,
        time_boundaries=time_boundaries, num_targets=num_targets, max_attn_len=max_attn_len, max_len=max_len,
    )


def run_on_padded(padded_fn, q, k, v, seq_offsets, max_seq_len, *, timestamps=None, query_timestamps=None,
                  max_len: Optional[int] = None, **kwargs) -> torch.Tensor:
    """``padded_fn`` (with ``naive_hstu_attention_padded``'s signature) on a jagged batch: pads q, k, v and the
    timestamps to the longest sequence, runs it, and returns the jagged ``[L, H, Dv]`` rows."""
    lengths = seq_offsets[1:] - seq_offsets[:-1]
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() > 0 else 0
    if q.shape[0] == 0 or max_len == 0:
        return q.new_zeros((q.shape[0], q.shape[1], v.shape[2]))
    qp, tok = jagged_to_padded(q, seq_offsets, max_len)
    kp, _ = jagged_to_padded(k, seq_offsets, max_len)
    vp, _ = jagged_to_padded(v, seq_offsets, max_len)
    ts = qts = None
    if timestamps is not None:
        ts, _ = jagged_to_padded(timestamps, seq_offsets, max_len)
        qts = ts if query_timestamps is None else jagged_to_padded(query_timestamps, seq_offsets, max_len)[0]
    out = padded_fn(qp, kp, vp, lengths, max_seq_len, timestamps=ts, query_timestamps=qts, **kwargs)
    return out[tok]


def hstu_positions_padded(lengths: torch.Tensor, N: int, num_targets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``p [B, N]``: each token's position in a padded batch of ``lengths [B]`` (targets all sit at the first
    target's; padded tokens at the history length)."""
    u = lengths if num_targets is None else lengths - num_targets.to(lengths.dtype)
    return torch.minimum(torch.arange(N, device=lengths.device)[None, :], u[:, None])


def hstu_mask_padded(lengths: torch.Tensor, N: int, *, num_targets: Optional[torch.Tensor] = None,
                     max_attn_len: int = 0):
    """The op's positions and mask on a padded batch of ``lengths [B]`` padded to ``N``.

    Returns ``p [B, N]`` (each token's position: targets all sit at the first target's) and ``valid [B, N, N]``
    bool (query i may see key j: causal on positions, within ``max_attn_len`` when > 0, a token always sees
    itself; padded tokens are never valid).
    """
    ar = torch.arange(N, device=lengths.device)
    tok = ar[None, :] < lengths[:, None]  # [B, N]
    p = hstu_positions_padded(lengths, N, num_targets)
    p_i, p_j = p[:, :, None], p[:, None, :]
    valid = p_j < p_i
    if max_attn_len > 0:
        valid &= p_i - p_j <= max_attn_len
    valid |= (ar[:, None] == ar[None, :])[None]
    valid &= tok[:, :, None] & tok[:, None, :]  # [B, N, N]
    return p, valid


def relative_position_index(p: torch.Tensor, max_seq_len: int) -> torch.Tensor:
    """``p [B, N]`` positions -> ``[B, N, N]`` int64 index ``p(i) - p(j) + max_seq_len - 1`` into ``pos_weight``;
    padded tokens may sit at ``p == max_seq_len``: clamped so their (masked) lookups stay in the table."""
    return (p[:, :, None] - p[:, None, :] + max_seq_len - 1).clamp_(0, 2 * max_seq_len - 2)


def hstu_scores_padded(
    q: torch.Tensor,
    k: torch.Tensor,
    lengths: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float = 1.0,
    timestamps: Optional[torch.Tensor] = None,
    query_timestamps: Optional[torch.Tensor] = None,
    pos_weight: Optional[torch.Tensor] = None,
    time_weight: Optional[torch.Tensor] = None,
    time_boundaries: Optional[torch.Tensor] = None,
    num_targets: Optional[torch.Tensor] = None,
    max_attn_len: int = 0,
):
    """The biased scores and the mask of the op on a padded batch, before the activation.

    ``q, k [B, N, H, Dqk]``, ``lengths [B]``, ``timestamps, query_timestamps [B, N]`` -> (``s [B, H, N, N]`` in
    float32 (float64 for float64 inputs), ``valid [B, 1, N, N]`` bool; padded tokens are never valid).
    """
    N = q.shape[1]
    compute = torch.promote_types(q.dtype, torch.float32)
    s = alpha * torch.einsum("bihd,bjhd->bhij", q.to(compute), k.to(compute))  # [B, H, N, N]

    p, valid = hstu_mask_padded(lengths, N, num_targets=num_targets, max_attn_len=max_attn_len)
    if pos_weight is not None:
        s = s + bias_lookup(pos_weight.to(compute), relative_position_index(p, max_seq_len))
    if time_weight is not None:
        qt = timestamps if query_timestamps is None else query_timestamps
        dt = (qt.to(torch.int64)[:, :, None] - timestamps.to(torch.int64)[:, None, :]).abs()
        bucket = torch.bucketize(dt, time_boundaries.to(torch.int64), right=True)
        s = s + bias_lookup(time_weight.to(compute), bucket)
    return s, valid[:, None]


def naive_hstu_attention_padded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: torch.Tensor,
    max_seq_len: int,
    *,
    scale: Optional[float] = None,
    **bias_and_mask,
) -> torch.Tensor:
    """The same op on a padded batch: ``q, k [B, N, H, Dqk]``, ``v [B, N, H, Dv]``, ``lengths [B]``, and the
    keywords of ``hstu_scores_padded`` (``timestamps, query_timestamps [B, N]``). Tokens at ``i >= lengths[b]``
    are ignored (whatever they hold) and their output rows are zero. Returns ``[B, N, H, Dv]`` in q's dtype."""
    if scale is None:
        scale = 1.0 / max_seq_len
    s, valid = hstu_scores_padded(q, k, lengths, max_seq_len, **bias_and_mask)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    a = torch.where(valid, F.silu(s), zero)
    tok = torch.arange(q.shape[1], device=q.device)[None, :] < lengths[:, None]
    # where, not a multiply by the mask: padded tokens' values (even NaN) must not leak through a zero weight
    vp = torch.where(tok[:, :, None, None], v.to(s.dtype), zero)
    out = scale * masked_product(a, valid, vp)  # [B, N, H, Dv]
    return out.to(q.dtype)


def masked_product(a: torch.Tensor, valid: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_j a[b, h, i, j] v[b, j, h, :]`` over valid pairs only: a masked pair adds nothing even where its
    value is not finite (a plain product would add ``0 * NaN = NaN``). ``a [B, H, N, N]`` (zero where invalid),
    ``valid [B, 1, N, N]``, ``v [B, N, H, D]`` -> ``[B, N, H, D]``."""
    out = torch.einsum("bhij,bjhd->bihd", a, v)
    finite = torch.isfinite(v)
    if bool(finite.all()):  # the common case: one product
        return out
    # an output element that sees a non-finite value keeps the plain (non-finite) product; the others are
    # recomputed on the finite values alone
    seen = torch.einsum("bhij,bjhd->bihd", valid.expand(-1, a.shape[1], -1, -1).to(v.dtype), (~finite).to(v.dtype))
    clean = torch.einsum("bhij,bjhd->bihd", a, torch.where(finite, v, torch.zeros((), dtype=v.dtype, device=v.device)))
    return torch.where(seen > 0, out, clean)
