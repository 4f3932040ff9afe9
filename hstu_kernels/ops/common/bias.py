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
        E, Hb = ctx.num_entries, grad.shape[0]
        if grad.is_cuda:
            g = grad.reshape(Hb, -1).t()
            out = torch.ops.aten.embedding_dense_backward(g.contiguous(), idx.reshape(-1), E, -1, False).t()
        else:
            flat = idx.reshape(-1)
            out = torch.stack([torch.bincount(flat, grad[h].reshape(-1), minlength=E) for h in range(Hb)])
        return out.to(grad.dtype), None


def bias_lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``table [Hb, E]`` at ``idx [B, N, N]`` -> ``[B, Hb, N, N]``."""
    return _TableLookup.apply(table, idx).transpose(0, 1)
