"""The reference path's attention, arranged for speed: what every block shares is built once per batch.

``hstu_kernels.hstu_attention(backend="torch")`` (the op's meaning) recomputes, in every block, the padding, the
mask, the relative positions and the time buckets of the batch: about a dozen passes over ``[B, N, N]`` int64
tensors per block and direction, which dominate a CPU training step at MovieLens sizes. Those depend only on the
batch, so ``AttentionPlan.build`` computes them once, as one int32 index per block of query rows into the
flattened position x time-bucket table, with the mask folded in (a masked pair reads an extra entry, ``-1e30``,
whose SiLU is exactly 0). Every valid pair has its key at or before its query in the padded layout (causal on
positions; a target sees the history and itself), so a block of query rows ``[r0, r1)`` needs only keys
``[0, r1)``: the blocks cover the lower triangle, about 60% of the square. Each block's attention then is one
table gather, one fused multiply-add of ``q k^T`` onto it, one SiLU and one product (``hstu.blocked_attention``).
Same meaning as the op (tested against it), for finite inputs; the op's non-finite contract is the op's, not this
path's (the model stops on non-finite values before they matter).
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from hstu_kernels import hstu_positions_padded

from .blocked_attention import MASKED_BIAS, blocked_attention, blocked_attention_rows


# rows per block when build() is not told (None: row_blocks' default); tests set it to split small batches
DEFAULT_BLOCK_ROWS: Optional[int] = None


def row_blocks(max_len: int, block_rows: Optional[int] = None) -> List[Tuple[int, int]]:
    """``[(r0, r1), ...]``: the query-row blocks of a padded length ``max_len``. Default: 4 blocks (rounded up to
    8 rows; at least 16), which computes ``~(1 + 2 + 3 + 4) / 16`` of the square at a handful of ops per block."""
    if block_rows is None:
        block_rows = DEFAULT_BLOCK_ROWS
    if block_rows is None:
        block_rows = max(16, -(-max_len // 32) * 8)
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    return [(r0, min(r0 + block_rows, max_len)) for r0 in range(0, max_len, block_rows)]


@dataclass
class AttentionPlan:
    """One batch's padded layout, and its mask and bias index by blocks of query rows, shared by every block.

    ``rows [L]``: each jagged row's index in the padded ``[B * N]`` layout (whose slots hold the segments longest
    first, see ``build``). ``blocks``: ``(s0, s1, r0, r1, index)`` with ``index [s1 - s0, r1 - r0, r1]`` int32:
    slots ``[s0, s1)``, query rows ``[r0, r1)`` against keys ``[0, r1)``, into the flattened
    ``[(2 * max_seq_len - 1) * num_buckets + 1]`` table (``rel * num_buckets + bucket``; ``num_buckets`` is 1
    without time bias; the last entry is the masked pair).
    ``pq, pk [B, N]`` int32: the encoded query and key positions ``index`` is computed from (padded rows and
    keys encoded so that they are masked), ``qts, ts [B, N]`` the rebased query and key times (None without time
    bias), ``pad [B, N]`` bool: padded tokens.
    """

    rows: torch.Tensor
    batch: int
    max_len: int
    max_seq_len: int
    blocks: List[Tuple[int, int, int, int, torch.Tensor]]
    pq: torch.Tensor
    pk: torch.Tensor
    qts: Optional[torch.Tensor]
    ts: Optional[torch.Tensor]
    pad: torch.Tensor
    time_boundaries: Optional[torch.Tensor]
    num_buckets: int
    window: int
    with_pos: bool
    with_time: bool
    head_segments: int = 0
    times_in_order: bool = False

    @property
    def num_entries(self) -> int:
        """Entries of the flattened table without the masked one: ``(2 * max_seq_len - 1) * num_buckets``."""
        return (2 * self.max_seq_len - 1) * self.num_buckets

    @classmethod
    def build(cls, seq_offsets, max_seq_len: int, max_len: int, *, timestamps=None, query_timestamps=None,
              time_boundaries=None, num_targets=None, max_attn_len: int = 0, with_pos: bool = True,
              with_time: bool = True, block_rows: Optional[int] = None, head_segments: int = 0):
        """``seq_offsets [B+1]``, ``timestamps [L]`` int64 (None: no time bias), ``query_timestamps [L]`` (the
        query side of the time bias; None: ``timestamps``), ``num_targets [B]``; ``max_len``: the longest segment
        (the caller knows it without a host sync); ``block_rows``: query rows per block (``row_blocks``);
        ``head_segments``: the first segments, which ``head`` can then take alone (0: no head).

        The padded layout holds the segments longest first (the head's among themselves, then the others'), so
        that a block of query rows ``[r0, r1)`` spans only the segments longer than ``r0``: a batch of mixed
        lengths (the training step's rating segments end at random cuts) computes little padding.
        """
        device = seq_offsets.device
        lengths = seq_offsets[1:] - seq_offsets[:-1]
        B, N, M = lengths.shape[0], max_len, max_seq_len
        if not 0 <= head_segments <= B:
            raise ValueError(f"head_segments must lie in [0, {B}], got {head_segments}")
        groups = [(0, head_segments), (head_segments, B)] if 0 < head_segments < B else [(0, B)]
        # slot s of the padded layout holds segment order[s]; one host sync for the lengths and the token count
        order = torch.cat([g0 + torch.argsort(lengths[g0:g1], descending=True, stable=True) for g0, g1 in groups])
        slot_len = lengths.index_select(0, order)
        host = torch.cat([slot_len, seq_offsets[-1:]]).tolist() if B else [0]
        slot_of = torch.empty_like(order).index_copy_(0, order, torch.arange(B, device=device))
        L = int(host[-1])
        seg = torch.repeat_interleave(torch.arange(B, device=device), lengths, output_size=L)
        local = torch.arange(L, device=device) - seq_offsets[:-1].index_select(0, seg)
        rows = slot_of.index_select(0, seg) * N + local
        ar = torch.arange(N, device=device)
        tok = ar[None, :] < slot_len[:, None]
        with_time = with_time and timestamps is not None
        nb = len(time_boundaries) + 1 if with_time else 1
        p = hstu_positions_padded(slot_len, N, None if num_targets is None else num_targets.index_select(0, order))
        # pq - pk = (p_i - p_j + M - 1) * nb: the relative-position entry; a pair is valid when p_j < p_i (and
        # within the window), and the encodings of padded queries (-N - 1) and keys (2M) are never valid
        pq = ((torch.where(tok, p, -N - 1) + M - 1) * nb).to(torch.int32)
        pk = (torch.where(tok, p, 2 * M) * nb).to(torch.int32)
        ts = qts = bounds = None
        ordered = False
        if with_time:
            tj = timestamps.to(torch.int64)
            qj = tj if query_timestamps is None else query_timestamps.to(torch.int64)
            ts, qts = _pad(tj, rows, B, N), _pad(qj, rows, B, N)
            # rebased per sequence so that the gaps fit int32 (half the memory traffic of int64)
            first = ts[:, :1].clone()
            ts, qts = ts - first, qts - first
            bounds = time_boundaries.to(torch.int64)
            # times in order within each segment, and every query at or after its own event: then each query
            # row's gaps fall along the keys, and its buckets are counted from one search per boundary
            starts = torch.zeros(L + 1, dtype=torch.bool, device=device)
            starts.index_fill_(0, seq_offsets[:-1].long(), True)
            in_order = ((tj[1:] >= tj[:-1]) | starts[1:L]).all() & (qj >= tj).all()
            # one host sync for both
            span = torch.maximum(ts.abs().max(), qts.abs().max()) if ts.numel() else ts.new_tensor(2**30)
            big, ordered = (int(x) for x in torch.stack([span, in_order.to(span.dtype)]).tolist())
            sentinel = 2**62
            if big < 2**30:
                ts, qts = ts.to(torch.int32), qts.to(torch.int32)
                bounds = bounds.clamp(max=2**31 - 1).to(torch.int32)
                sentinel = 2**30 - 1  # above every rebased time; its gaps still fit int32
            # padded keys sort last
            ts = ts.masked_fill_(~tok, sentinel)
        plan = cls(rows, B, N, M, [], pq, pk, qts, ts, ~tok, bounds, nb, max_attn_len, with_pos, with_time,
                   head_segments, bool(ordered))
        for g0, g1 in groups:
            longest = host[g0] if g1 > g0 else 0
            for r0, r1 in row_blocks(longest, block_rows):
                # the group's segments longer than r0 (they come first)
                s1 = g0 + sum(1 for n in host[g0:g1] if n > r0)
                plan.blocks.append((g0, s1, r0, r1, plan._block_index(g0, s1, r0, r1)))
        return plan

    def _index(self, pq, pk, qts, ts):
        """The table index of queries against keys: ``pq, qts [X, c]``, ``pk, ts [X, K]`` -> (``index [X, c, K]``
        int32, not yet masked; ``masked [X, c, K]`` bool, the diagonal not yet valid)."""
        index = pq[:, :, None] - pk[:, None, :]
        lowest = (self.max_seq_len - 1) * self.num_buckets  # relative position 0
        masked = index <= lowest
        if self.window > 0:
            masked |= index > lowest + self.window * self.num_buckets
        if self.with_time:
            index += self._buckets(qts, ts)
        return index, masked

    def _buckets(self, qts, ts):
        """``[X, c, K]`` int32 time buckets of ``|qts_i - ts_j|`` (``qts [X, c]``, ``ts [X, K]``), exact on every
        pair the mask keeps (key at or before query)."""
        bounds = self.time_boundaries
        if not self.times_in_order:
            return torch.bucketize((qts[:, :, None] - ts[:, None, :]).abs_(), bounds, right=True, out_int32=True)
        # keys in time order, and a kept pair's gap is qts_i - ts_j >= 0: key j is in bucket >= m iff
        # j < count_m = #{keys with ts <= qts_i - bounds[m]}, so bucket_ij = #{m : count_m > j}, a cumulative sum
        # of -1 at each count (nb - 1 at 0) along the keys
        X, c = qts.shape
        K, nbounds = ts.shape[1], bounds.shape[0]
        cuts = (qts[:, :, None] - bounds[None, None, :]).reshape(X, c * nbounds)
        counts = torch.searchsorted(ts.contiguous(), cuts, right=True).view(X, c, nbounds)
        steps = torch.zeros(X, c, K + 1, dtype=torch.int32, device=ts.device)
        steps[:, :, 0] = nbounds
        steps.scatter_add_(2, counts, steps.new_full((1, 1, 1), -1).expand(X, c, nbounds))
        return steps.cumsum(2, dtype=torch.int32)[:, :, :K]

    def _block_index(self, s0: int, s1: int, r0: int, r1: int) -> torch.Tensor:
        """``[s1 - s0, r1 - r0, r1]`` int32: slots ``[s0, s1)``, query rows ``[r0, r1)`` against keys ``[0, r1)``."""
        t, sl = self.with_time, slice(s0, s1)
        index, masked = self._index(self.pq[sl, r0:r1], self.pk[sl, :r1], self.qts[sl, r0:r1] if t else None,
                                    self.ts[sl, :r1] if t else None)
        # a token sees itself (relative position 0); a padded one sees nothing
        masked.diagonal(offset=r0, dim1=1, dim2=2).copy_(self.pad[sl, r0:r1])
        return index.masked_fill_(masked, self.num_entries)

    def row_index(self, b: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """``[R, N]`` int32: the masked index of the padded query rows ``(b, i)`` (``[R]`` each) against every key."""
        t = self.with_time
        index, masked = self._index(self.pq[b, i][:, None], self.pk[b], self.qts[b, i][:, None] if t else None,
                                    self.ts[b] if t else None)
        index, masked = index[:, 0], masked[:, 0]
        own = torch.arange(self.max_len, device=b.device)[None, :] == i[:, None]
        masked.masked_fill_(own, False).logical_or_(own & self.pad[b, i][:, None])
        return index.masked_fill_(masked, self.num_entries)

    def head(self, segments: int, tokens: int) -> "AttentionPlan":
        """The plan of the batch's first ``segments`` segments alone (their ``tokens`` jagged rows come first):
        ``segments`` must be the ``head_segments`` the plan was built with (or every segment)."""
        if segments == self.batch:
            return self
        if segments != self.head_segments or segments == 0:
            raise ValueError(f"AttentionPlan.head({segments}): the plan was built with head_segments="
                             f"{self.head_segments}")
        t, sl = self.with_time, slice(0, segments)
        return AttentionPlan(
            self.rows[:tokens], segments, self.max_len, self.max_seq_len,
            [blk for blk in self.blocks if blk[1] <= segments], self.pq[sl], self.pk[sl],
            self.qts[sl] if t else None, self.ts[sl] if t else None, self.pad[sl],
            self.time_boundaries, self.num_buckets, self.window, self.with_pos, self.with_time, segments,
        )

    def pad_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x [L, ...]`` -> ``[B, N, ...]`` (zeros past each length)."""
        return _pad(x, self.rows, self.batch, self.max_len)

    def table(self, pos_weight, time_weight, dtype) -> torch.Tensor:
        """``[Hb, num_entries + 1]``: the flattened position x time-bucket table that the index reads, with the
        masked entry last (``pos_weight [Hb, 2 max_seq_len - 1]``, ``time_weight [Hb, num_buckets]``; a table
        not given reads as zeros)."""
        if (pos_weight is not None) != self.with_pos or (time_weight is not None) != self.with_time:
            raise ValueError("AttentionPlan: the block's bias tables differ from the ones the plan was built for")
        given = [w for w in (pos_weight, time_weight) if w is not None]
        hb = max((w.shape[0] for w in given), default=1)  # a shared table broadcasts over per-head ones
        device = self.pq.device
        pos = pos_weight.to(dtype) if self.with_pos else torch.zeros(hb, 2 * self.max_seq_len - 1, dtype=dtype,
                                                                     device=device)
        flat = pos[:, :, None] + time_weight.to(dtype)[:, None, :] if self.with_time else pos[:, :, None]
        masked = torch.full((hb, 1), MASKED_BIAS, dtype=dtype, device=device)
        return torch.cat([flat.flatten(1), masked], dim=1)

    def attention(self, q, k, v, *, alpha: float = 1.0, pos_weight=None, time_weight=None) -> torch.Tensor:
        """``q, k, v [L, H, d]`` -> ``[L, H, d]``: ``sum_valid SiLU(alpha q.k + bias) v / max_seq_len``."""
        compute = torch.promote_types(q.dtype, torch.float32)
        qp, kp, vp = (self.pad_rows(t.to(compute)).transpose(1, 2) for t in (q, k, v))  # [B, H, N, d]
        table = self.table(pos_weight, time_weight, compute)
        out = blocked_attention(qp, kp, vp, table, self.blocks, alpha, 1.0 / self.max_seq_len)  # [B, H, N, d]
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
        kp, vp = (self.pad_rows(t.to(compute)).transpose(1, 2) for t in (k, v))  # [B, H, N, d]
        table = self.table(pos_weight, time_weight, compute)
        out = blocked_attention_rows(q.to(compute), kp, vp, b, self.row_index(b, i), table, alpha,
                                     1.0 / self.max_seq_len)
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
