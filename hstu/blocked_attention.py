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

# the bias of a masked pair: far below any score, finite in float32
MASKED_BIAS = -1e30


def _table_grad(index: torch.Tensor, grad: torch.Tensor, entries: int) -> torch.Tensor:
    """``sum`` of ``grad [Hb, ...]`` per entry of ``index [...]`` -> ``[Hb, entries]``, without atomics on the CPU
    (a histogram) or on the GPU (``embedding_dense_backward`` sorts)."""
    Hb = grad.shape[0]
    flat = index.reshape(-1)
    if grad.is_cuda:
        g = grad.reshape(Hb, -1).t().contiguous()
        return torch.ops.aten.embedding_dense_backward(g, flat.long(), entries, -1, False).t()
    return torch.stack([torch.bincount(flat, grad[h].reshape(-1), minlength=entries) for h in range(Hb)])


def _gather(table: torch.Tensor, index: torch.Tensor, H: int) -> torch.Tensor:
    """``table [Hb, E]`` at ``index [B, c, K]`` -> a fresh ``[B * H, c, K]`` (Hb = 1 is shared by the H heads)."""
    Hb = table.shape[0]
    B, c, K = index.shape
    bias = table.index_select(1, index.reshape(-1)).view(Hb, B, c, K)
    if Hb == 1 and H == 1:
        return bias.view(B, c, K)
    # contiguous: reshape could keep the expanded heads' stride 0, and the caller writes in place
    return bias.transpose(0, 1).expand(B, H, c, K).contiguous().view(B * H, c, K)


def _attend(q3, k3, v3, table, blocks, H: int, alpha: float, keep: bool):
    """The forward over the blocks: ``q3 [B H, Nq, d]``, ``k3 [B H, Nk, d]``, ``v3`` (already scaled) ->
    (``[B H, Nq, dv]``, the blocks' ``(scores, activations)`` when ``keep``, else None: SiLU then runs in place)."""
    out = q3.new_zeros(q3.shape[0], q3.shape[1], v3.shape[2])
    saved = [] if keep else None
    for s0, s1, r0, r1, index in blocks:
        K, bh = index.shape[2], slice(s0 * H, s1 * H)
        s = _gather(table, index, H).baddbmm_(q3[bh, r0:r1], k3[bh, :K].transpose(1, 2), alpha=alpha)
        a = F.silu(s) if keep else F.silu(s, inplace=True)
        out[bh, r0:r1] = torch.bmm(a, v3[bh, :K])
        if keep:
            saved.append((s, a))
    return out, saved


class _BlockedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, table, blocks, alpha, scale):
        B, H, Nq, d = q.shape
        Nk, dv = k.shape[2], v.shape[-1]
        q3, k3 = q.reshape(B * H, Nq, d), k.reshape(B * H, Nk, d)
        v3 = v.reshape(B * H, Nk, dv) * scale
        out, saved = _attend(q3, k3, v3, table, blocks, H, alpha, keep=True)
        ctx.blocks, ctx.saved, ctx.alpha, ctx.scale = blocks, saved, alpha, scale
        ctx.shapes = (B, H, Nq, Nk, d, dv, table.shape)
        ctx.save_for_backward(q3, k3, v3)
        return out.view(B, H, Nq, dv)

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
            dtable += _table_grad(index, per_head.transpose(0, 1), E)
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
    B, H, Nq, d = q.shape
    Nk, dv = k.shape[2], v.shape[-1]
    out, _ = _attend(q.reshape(B * H, Nq, d), k.reshape(B * H, Nk, d), v.reshape(B * H, Nk, dv) * scale, table,
                     blocks, H, alpha, keep=False)
    return out.view(B, H, Nq, dv)


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
    R = q.shape[0]
    if R == 0:
        return q.new_zeros(0, H, v.shape[-1])
    order = torch.argsort(b, stable=True)
    counts = torch.bincount(b, minlength=B)
    sorted_b = b.index_select(0, order)
    slot_sorted = torch.arange(R, device=b.device) - (counts.cumsum(0) - counts).index_select(0, sorted_b)
    W = int(counts.max())
    at = torch.empty_like(order).index_copy_(0, order, sorted_b * W + slot_sorted)  # each row's padded slot
    masked = table.shape[1] - 1
    padded_index = index.new_full((B * W, N), masked).index_copy_(0, at, index).view(B, W, N)
    qp = q.new_zeros(B * W, H, d).index_copy(0, at, q).view(B, W, H, d).transpose(1, 2)
    out = blocked_attention(qp, k, v, table, [(0, B, 0, W, padded_index)], alpha, scale)  # [B, H, W, dv]
    return out.transpose(1, 2).reshape(B * W, H, -1).index_select(0, at)
