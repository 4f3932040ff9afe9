"""The reference path's attention, arranged for speed: what every block shares is built once per batch.

``hstu_kernels.hstu_attention(backend="torch")`` (the op's meaning) recomputes, in every block, the padding, the
mask, the relative positions and the time buckets of the batch: about a dozen passes over ``[B, N, N]`` int64
tensors per block and direction, which dominate a CPU training step at MovieLens sizes. Those depend only on the
batch, so ``AttentionPlan.build`` computes them once (one combined index into the position x time-bucket table);
each block then does two products, one table lookup, one SiLU and one mask. Same meaning as the op (tested
against it), for finite inputs; the op's non-finite contract is the op's, not this path's (the model stops on
non-finite values before they matter).
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from hstu_kernels import bias_lookup, hstu_mask_padded, relative_position_index


@dataclass
class AttentionPlan:
    """One batch's padded layout, mask and bias index, shared by every block.

    ``rows [L]``: each jagged row's index in the padded ``[B * N]`` layout. ``valid [B, 1, N, N]`` bool.
    ``bias_index [B, N, N]`` int64 into the flattened ``[2 * max_seq_len - 1, num_buckets]`` table
    (``rel * num_buckets + bucket``; ``num_buckets`` is 1 without time bias), or None without any bias.
    """

    rows: torch.Tensor
    batch: int
    max_len: int
    max_seq_len: int
    valid: torch.Tensor
    bias_index: Optional[torch.Tensor]
    num_buckets: int
    with_pos: bool
    with_time: bool

    @classmethod
    def build(cls, seq_offsets, max_seq_len: int, max_len: int, *, timestamps=None, query_timestamps=None,
              time_boundaries=None, num_targets=None, max_attn_len: int = 0, with_pos: bool = True,
              with_time: bool = True):
        """``seq_offsets [B+1]``, ``timestamps [L]`` int64 (None: no time bias), ``query_timestamps [L]`` (the
        query side of the time bias; None: ``timestamps``), ``num_targets [B]``; ``max_len``: the longest segment
        (the caller knows it without a host sync)."""
        device = seq_offsets.device
        lengths = seq_offsets[1:] - seq_offsets[:-1]
        B, N = lengths.shape[0], max_len
        ar = torch.arange(N, device=device)
        tok = ar[None, :] < lengths[:, None]
        rows = (torch.arange(B, device=device)[:, None] * N + ar[None, :])[tok]
        p, valid = hstu_mask_padded(lengths, N, num_targets=num_targets, max_attn_len=max_attn_len)
        with_time = with_time and timestamps is not None
        nb = len(time_boundaries) + 1 if with_time else 1
        index = None
        if with_pos:
            index = relative_position_index(p, max_seq_len).mul_(nb)
        if with_time:
            ts = _pad(timestamps.to(torch.int64), rows, B, N)
            qts = ts if query_timestamps is None else _pad(query_timestamps.to(torch.int64), rows, B, N)
            # rebased per sequence so that the gaps fit int32 (half the memory traffic of int64)
            first = ts[:, :1].clone()
            ts, qts = ts - first, qts - first
            # one host sync for both
            big = int(torch.maximum(ts.abs().max(), qts.abs().max())) if ts.numel() else 2**30
            if big < 2**30:
                ts, qts = ts.to(torch.int32), qts.to(torch.int32)
                time_boundaries = time_boundaries.clamp(max=2**31 - 1).to(torch.int32)
            bucket = torch.bucketize((qts[:, :, None] - ts[:, None, :]).abs_(), time_boundaries, right=True)
            index = bucket if index is None else index.add_(bucket)
        return cls(rows, B, N, max_seq_len, valid[:, None], index, nb, with_pos, with_time)

    def head(self, segments: int, tokens: int) -> "AttentionPlan":
        """The plan of the batch's first ``segments`` segments alone (their ``tokens`` jagged rows come first)."""
        return AttentionPlan(self.rows[:tokens], segments, self.max_len, self.max_seq_len, self.valid[:segments],
                             None if self.bias_index is None else self.bias_index[:segments], self.num_buckets,
                             self.with_pos, self.with_time)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x [L, ...]`` -> ``[B, N, ...]`` (zeros past each length)."""
        return _pad(x, self.rows, self.batch, self.max_len)

    def bias(self, pos_weight, time_weight, dtype) -> Optional[torch.Tensor]:
        """``[B, Hb, N, N]`` from the block's tables (``pos_weight [Hb, 2N - 1]``, ``time_weight [Hb, nb]``)."""
        table = self._table(pos_weight, time_weight)
        return None if table is None else bias_lookup(table.to(dtype), self.bias_index)

    def _table(self, pos_weight, time_weight) -> Optional[torch.Tensor]:
        """The flattened table ``[Hb, E]`` that ``bias_index`` reads (None without any bias)."""
        if self.bias_index is None:
            return None
        if (pos_weight is not None) != self.with_pos or (time_weight is not None) != self.with_time:
            raise ValueError("AttentionPlan: the block's bias tables differ from the ones the plan was built for")
        if self.with_pos and self.with_time:
            return (pos_weight[:, :, None] + time_weight[:, None, :]).flatten(1)
        return pos_weight if self.with_pos else time_weight

    def attention(self, q, k, v, *, alpha: float = 1.0, pos_weight=None, time_weight=None) -> torch.Tensor:
        """``q, k, v [L, H, d]`` -> ``[L, H, d]``: ``sum_valid SiLU(alpha q.k + bias) v / max_seq_len``."""
        compute = torch.promote_types(q.dtype, torch.float32)
        qp, kp, vp = (self.pad(t.to(compute)).transpose(1, 2) for t in (q, k, v))  # [B, H, N, d]
        s = torch.matmul(qp, kp.transpose(-1, -2))
        if alpha != 1.0:
            s = s * alpha
        bias = self.bias(pos_weight, time_weight, compute)
        if bias is not None:
            s = s + bias
        a = torch.where(self.valid, F.silu(s), torch.zeros((), dtype=compute, device=s.device))
        out = torch.matmul(a, vp) / self.max_seq_len  # [B, H, N, d]
        flat = out.transpose(1, 2).reshape(self.batch * self.max_len, *q.shape[1:-1], v.shape[-1])
        return _Rows.apply(flat, self.rows).to(q.dtype)

    def attention_rows(self, q, k, v, query_rows, *, alpha: float = 1.0, pos_weight=None,
                       time_weight=None) -> torch.Tensor:
        """``attention(...)[query_rows]`` without the other query rows' work: ``q [R, H, d]`` the queries of the
        jagged rows ``query_rows [R]`` (int64, any order, repeats allowed), ``k, v [L, H, d]`` all of them ->
        ``[R, H, d]``. Each row costs ``O(N d)`` rather than ``O(N^2 d)`` per batch: the encoder's last block
        needs only the rows it reports (the last history token and the target at evaluation)."""
        compute = torch.promote_types(q.dtype, torch.float32)
        flat = self.rows[query_rows]
        b, i = flat // self.max_len, flat % self.max_len
        kp, vp = (self.pad(t.to(compute)).transpose(1, 2)[b] for t in (k, v))  # [R, H, N, d]
        s = torch.matmul(q.to(compute)[:, :, None, :], kp.transpose(-1, -2))[:, :, 0]  # [R, H, N]
        if alpha != 1.0:
            s = s * alpha
        table = self._table(pos_weight, time_weight)
        if table is not None:
            s = s + bias_lookup(table.to(compute), self.bias_index[b, i][:, None])[:, :, 0]  # [R, Hb, N]
        a = torch.where(self.valid[b, 0, i][:, None], F.silu(s), torch.zeros((), dtype=compute, device=s.device))
        out = torch.matmul(a[:, :, None, :], vp)[:, :, 0] / self.max_seq_len  # [R, H, d]
        return out.to(q.dtype)


class _Rows(torch.autograd.Function):
    """``x[rows]`` for distinct ``rows``: the gradient is a copy into those rows (autograd's generic gradient
    of an index is an accumulating scatter, serial on the CPU and the slowest step of a training step)."""

    @staticmethod
    def forward(ctx, x, rows):
        ctx.save_for_backward(rows)
        ctx.num_rows = x.shape[0]
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        return grad.new_zeros((ctx.num_rows, *grad.shape[1:])).index_copy_(0, rows, grad), None


def _pad(x: torch.Tensor, rows: torch.Tensor, B: int, N: int) -> torch.Tensor:
    # index_copy: its gradient is a gather
    out = x.new_zeros((B * N, *x.shape[1:]))
    return out.index_copy(0, rows, x).reshape(B, N, *x.shape[1:])
