"""Conversions between the jagged layout (values ``[L, ...]`` + ``seq_offsets [B+1]``) and padded ``[B, T, ...]``."""

import torch

from hstu_kernels import jagged_to_padded

__all__ = ["lengths_to_offsets", "jagged_to_padded", "padded_to_jagged"]


def lengths_to_offsets(lengths: torch.Tensor) -> torch.Tensor:
    """``lengths [B]`` -> int64 ``seq_offsets [B+1]`` starting at 0."""
    out = torch.zeros(lengths.shape[0] + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths.to(torch.int64), 0, out=out[1:])
    return out


def padded_to_jagged(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x [B, T, ...]`` with ``lengths [B]`` -> ``[sum(lengths), ...]`` (rows past each length dropped)."""
    mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    return x[mask]
