"""The jagged layout (values ``[L, ...]`` + ``seq_offsets [B+1]``) and its padded view ``[B, N, ...]``."""

import torch


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


def longest_segment(offsets: torch.Tensor) -> int:
    """The longest segment of ``offsets [B+1]`` (0 without segments): one host synchronisation on a GPU."""
    return int((offsets[1:] - offsets[:-1]).max()) if offsets.shape[0] > 1 else 0
