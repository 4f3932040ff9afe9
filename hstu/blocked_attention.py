"""SiLU attention over the blocks of query rows of an ``AttentionPlan``, with a hand-written backward.

Autograd's graph of the same expression keeps the bias, the scores, the mask and the activation as separate
``[B, H, N, N]`` tensors and reads each again in the backward; here each block is one table gather, one in-place
``baddbmm`` of ``alpha q k^T`` onto it, one SiLU and one product, and its backward is one SiLU backward (written
over the incoming gradient), one histogram of the table gradient and three products. The mask is in the index:
a masked pair reads ``MASKED_BIAS``, where SiLU and its derivative are exactly 0 (``exp`` overflows, so the
sigmoid is 0), in float32 and float64 alike.
"""

from typing import List, Tuple

import torch
import torch.nn.functional as F

from hstu_kernels import bias_table_grad

from .jagged import group_slots

# the bias of a masked pair: far below any score, finite in float32
MASKED_BIAS = -1e30


def _gather(table: torch.Tensor, index: torch.Tensor, H: int) -> torch.Tensor:
    """``table [Hb, E]`` at ``index [B, c, K]`` -> a fresh ``[B * H, c, K]`` (Hb = 1 is shared by the H heads)."""
    Hb = table.shape[0]
    B, c, K = index.shape
    bias = table.index_select(1, index.reshape(-1)).view(Hb, B, c, K)
    if Hb == 1 and H == 1:
        return bias.view(B, c, K)
    # contiguous: reshape could keep the expanded heads' stride 0, and the caller writes in place
    return bias.transpose(0, 1).expand(B, H, c, K).contiguous().view(B * H, c, K)


def _attend(q, k, v, table, blocks, alpha: float, scale: float, keep: bool):
    """The forward over the blocks: ``q [B, H, Nq, d]``, ``k, v [B, H, Nk, d]`` -> (``out [B, H, Nq, dv]``, the
    blocks' ``(scores, activations)`` when ``keep``, else None: SiLU then runs in place, and the
    ``[B H, ., .]`` views of q, k and ``scale * v`` the blocks read)."""
    B, H, Nq, d = q.shape
    Nk, dv = k.shape[2], v.shape[-1]
    q3, k3 = q.reshape(B * H, Nq, d), k.reshape(B * H, Nk, d)
    v3 = v.reshape(B * H, Nk, dv) * scale
    out = q3.new_zeros(B * H, Nq, dv)
    saved = [] if keep else None
    for s0, s1, r0, r1, index in blocks:
        K, bh = index.shape[2], slice(s0 * H, s1 * H)
        s = _gather(table, index, H).baddbmm_(q3[bh, r0:r1], k3[bh, :K].transpose(1, 2), alpha=alpha)
        a = F.silu(s) if keep else F.silu(s, inplace=True)
        out[bh, r0:r1] = torch.bmm(a, v3[bh, :K])
        if keep:
            saved.append((s, a))
    return out.view(B, H, Nq, dv), saved, (q3, k3, v3)


class _BlockedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, table, blocks, alpha, scale):
        out, saved, views = _attend(q, k, v, table, blocks, alpha, scale, keep=True)
        ctx.blocks, ctx.saved, ctx.alpha, ctx.scale = blocks, saved, alpha, scale
        ctx.shapes = (*q.shape[:3], k.shape[2], q.shape[3], v.shape[3], table.shape)
        ctx.save_for_backward(*views)
        return out

    @staticmethod
    def backward(ctx, grad):
        q3, k3, v3 = ctx.saved_tensors
        B, H, Nq, Nk, d, dv, (Hb, E) = ctx.shapes
        g3 = grad.reshape(B * H, Nq, dv)
        dq, dk, dvv = torch.zeros_like(q3), torch.zeros_like(k3), torch.zeros_like(v3)
        dtable = g3.new_zeros(Hb, E)
        for (s0, s1, r0, r1, index), (s, a) in zip(ctx.blocks, ctx.saved):
            K, bh = index.shape[2], slice(s0 * H, s1 * H)
            g = g3[bh, r0:r1]
            dvv[bh, :K] += torch.bmm(a.transpose(1, 2), g)
            ds = torch.bmm(g, v3[bh, :K].transpose(1, 2))
            ds = torch.ops.aten.silu_backward.grad_input(ds, s, grad_input=ds)
            dq[bh, r0:r1] = torch.bmm(ds, k3[bh, :K])
            dk[bh, :K] += torch.bmm(ds.transpose(1, 2), q3[bh, r0:r1])
            per_head = ds.view(s1 - s0, H, r1 - r0, K)
            if Hb == 1 and H > 1:
                per_head = per_head.sum(1, keepdim=True)
            dtable += bias_table_grad(index, per_head.transpose(0, 1), E)
        return (dq.mul_(ctx.alpha).view(B, H, Nq, d), dk.mul_(ctx.alpha).view(B, H, Nk, d),
                dvv.mul_(ctx.scale).view(B, H, Nk, dv), dtable, None, None, None)


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                      blocks: List[Tuple[int, int, int, int, torch.Tensor]], alpha: float,
                      scale: float) -> torch.Tensor:
    """``scale * sum_j SiLU(alpha q_i . k_j + table[index_ij]) v_j`` over blocks of sequences and query rows.

    Args:
        q: ``[B, H, Nq, d]``; k: ``[B, H, Nk, d]``; v: ``[B, H, Nk, dv]``; one float dtype (float32 or float64).
        table: ``[Hb, E]`` (Hb in {1, H}), the flattened bias table with ``MASKED_BIAS`` at the masked entries.
        blocks: ``(s0, s1, r0, r1, index)`` with ``index [s1 - s0, r1 - r0, K]`` int32/int64 into the table:
            sequences ``[s0, s1)``, query rows ``[r0, r1)``, against keys ``[0, K)`` (``K <= Nk``; later keys
            weigh nothing). Query rows in no block get zeros.

    Returns:
        ``[B, H, Nq, dv]``; differentiable in q, k, v and the table.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, table)):
        return _BlockedAttention.apply(q, k, v, table, blocks, alpha, scale)
    return _attend(q, k, v, table, blocks, alpha, scale, keep=False)[0]


def blocked_attention_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: torch.Tensor,
                           index: torch.Tensor, table: torch.Tensor, alpha: float, scale: float) -> torch.Tensor:
    """Single query rows: ``q [R, H, d]`` of sequences ``b [R]`` (any order, repeats allowed) against
    ``k, v [B, H, N, d]`` with the table index ``index [R, N]`` of their pairs (the table's last entry is the
    masked one) -> ``[R, H, dv]``.

    The rows are laid out per sequence (``[B, W, d]``, W the most rows of one sequence) and go through
    ``blocked_attention`` as one block: no ``[R, N, d]`` gather of keys and values, whose gradient would be a
    scatter-add as large.
    """
    B, H, N, d = k.shape
    if q.shape[0] == 0:
        return q.new_zeros(0, H, v.shape[-1])
    at, W = group_slots(b, B)  # each row's slot in the [B, W] layout
    masked = table.shape[1] - 1
    padded_index = index.new_full((B * W, N), masked).index_copy_(0, at, index).view(B, W, N)
    qp = q.new_zeros(B * W, H, d).index_copy(0, at, q).view(B, W, H, d).transpose(1, 2)
    out = blocked_attention(qp, k, v, table, [(0, B, 0, W, padded_index)], alpha, scale)  # [B, H, W, dv]
    return out.transpose(1, 2).reshape(B * W, H, -1).index_select(0, at)
