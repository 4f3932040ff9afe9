"""The relative-bias tables' lookup: ``table [Hb, E]`` read at integer indices, with a gradient that reduces
without atomics.

Its backward is a histogram (``bincount``) on the CPU and ``embedding_dense_backward`` (sort and segment-reduce)
on the GPU: never ``index_put`` accumulation, whose atomics on a handful of table entries make the backward
dozens of times slower on a GPU.
"""

import torch


class _TableLookup(torch.autograd.Function):
    """``table [Hb, E]`` read at ``idx [...]`` -> ``[Hb, ...]``, with a gradient that reduces without atomics."""

    @staticmethod
    def forward(ctx, table, idx):
        ctx.save_for_backward(idx)
        ctx.num_entries = table.shape[1]
        # index_select over the flat indices: 2-4x faster on the CPU than advanced indexing table[:, idx]
        return table.index_select(1, idx.reshape(-1)).view(table.shape[0], *idx.shape)

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        return bias_table_grad(idx, grad, ctx.num_entries), None


def bias_table_grad(idx: torch.Tensor, grad: torch.Tensor, entries: int) -> torch.Tensor:
    """The gradient of a ``table [Hb, entries]`` read at ``idx [...]`` (int32/int64): ``grad [Hb, ...]`` summed per
    entry -> ``[Hb, entries]`` in grad's dtype, a histogram on the CPU and a sort-based reduction on the GPU."""
    Hb, flat = grad.shape[0], idx.reshape(-1)
    if grad.is_cuda:
        g = grad.reshape(Hb, -1).t().contiguous()
        out = torch.ops.aten.embedding_dense_backward(g, flat.long(), entries, -1, False).t()
    else:
        out = torch.stack([torch.bincount(flat, grad[h].reshape(-1), minlength=entries) for h in range(Hb)])
    return out.to(grad.dtype)


def bias_lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``table [Hb, E]`` at ``idx [B, N, N]`` -> ``[B, Hb, N, N]``."""
    return _TableLookup.apply(table, idx).transpose(0, 1)
