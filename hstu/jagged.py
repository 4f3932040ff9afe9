"""Conversions between the jagged layout (values ``[L, ...]`` + ``seq_offsets [B+1]``) and padded ``[B, T, ...]``."""

import torch

from hstu_kernels import jagged_to_padded

__all__ = ["lengths_to_offsets", "jagged_to_padded", "padded_to_jagged", "segment_ids", "check_offsets",
           "inverse_positions", "group_slots"]


def lengths_to_offsets(lengths: torch.Tensor) -> torch.Tensor:
    """``lengths [B]`` -> int64 ``seq_offsets [B+1]`` starting at 0."""
    out = torch.zeros(lengths.shape[0] + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths.to(torch.int64), 0, out=out[1:])
    return out


def padded_to_jagged(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x [B, T, ...]`` with ``lengths [B]`` -> ``[sum(lengths), ...]`` (rows past each length dropped)."""
    mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    return x[mask]


def segment_ids(offsets: torch.Tensor, total: int) -> torch.Tensor:
    """``[total]`` the segment (user) index of each row of a jagged tensor with ``offsets [B+1]``."""
    b = offsets.shape[0] - 1
    return torch.repeat_interleave(torch.arange(b, device=offsets.device), offsets[1:] - offsets[:-1],
                                   output_size=total)


def check_offsets(name: str, offsets: torch.Tensor, length: int) -> torch.Tensor:
    """``offsets [B+1]`` as int64, checked to rise from 0 to ``length``; a ValueError naming ``name`` otherwise."""
    if offsets.dim() != 1 or offsets.shape[0] < 1:
        raise ValueError(f"{name} must have shape [B+1], got {tuple(offsets.shape)}")
    offsets = offsets.to(torch.int64)
    if int(offsets[0]) != 0 or int(offsets[-1]) != length or bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError(f"{name} must rise from 0 to {length} (the number of rows it splits), got {offsets.tolist()}")
    return offsets


def inverse_positions(offsets: torch.Tensor, total: int, num_targets=None) -> torch.Tensor:
    """``[total]`` int64 distance of each history row from its segment's end: the last history event is 1, the one
    before it 2, ...; the ``num_targets [B]`` target rows closing each segment are 0 (they sit after the history)."""
    offsets = offsets.to(torch.int64)
    seg = segment_ids(offsets, total)
    history_end = offsets[1:] if num_targets is None else offsets[1:] - num_targets.to(torch.int64)
    dist = history_end[seg] - torch.arange(total, device=offsets.device)
    return dist.clamp(min=0)


def group_slots(groups: torch.Tensor, num_groups: int):
    """Rows of ``groups [R]`` (int64 group ids, any order) laid out per group: ``(at [R], width)`` with ``at`` each
    row's index in a ``[num_groups, width]`` layout (a group's rows in their order, from slot 0), ``width`` the
    most rows of one group (0 when R = 0; one host sync)."""
    R = groups.shape[0]
    if R == 0:
        return groups.new_zeros(0), 0
    order = torch.argsort(groups, stable=True)
    counts = torch.bincount(groups, minlength=num_groups)
    sorted_groups = groups.index_select(0, order)
    slot = torch.arange(R, device=groups.device) - (counts.cumsum(0) - counts).index_select(0, sorted_groups)
    width = int(counts.max())
    return torch.empty_like(order).index_copy_(0, order, sorted_groups * width + slot), width
