from typing import Sequence

import torch
from torch import nn

# < 1 hour, < 1 day, < 1 week, < 30 days, >= 30 days
DEFAULT_TIME_BOUNDARIES = (3600, 86400, 604800, 2592000)
# MovieLens rates in sessions: on ml-1m-half 54% of the gaps between consecutive ratings are 0 s and 98% under
# 1 h, where the coarse buckets see one value; these resolve seconds to minutes (16: the most the fused kernels take)
FINE_TIME_BOUNDARIES = (1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 14400, 86400, 604800, 2592000, 7776000, 31536000)
TIME_BUCKETS = {"coarse": DEFAULT_TIME_BOUNDARIES, "fine": FINE_TIME_BOUNDARIES}


class RelativeAttentionBias(nn.Module):
    """The bias tables of one HSTU block: relative positions and time-gap buckets.

    Args:
        max_seq_len: N. ``pos_weight [Hb, 2N - 1]`` is indexed by ``p(i) - p(j) + N - 1``.
        num_heads: Hb, 1 (tables shared by all heads) or the block's number of heads.
        time_boundaries: sorted seconds; ``time_weight [Hb, len(boundaries) + 1]`` is indexed by the number of
            boundaries ``<= |t_i - t_j|``.

    Both tables start at zero, so an untrained block behaves like plain attention.
    """

    def __init__(self, max_seq_len: int, num_heads: int = 1, time_boundaries: Sequence[int] = DEFAULT_TIME_BOUNDARIES):
        super().__init__()
        boundaries = list(time_boundaries)
        if max_seq_len < 1 or num_heads < 1:
            raise ValueError(f"need max_seq_len >= 1 and num_heads >= 1, got {max_seq_len}, {num_heads}")
        if any(b > a for b, a in zip(boundaries, boundaries[1:])):
            raise ValueError(f"time_boundaries must be sorted, got {boundaries}")
        self.max_seq_len = max_seq_len
        self.pos_weight = nn.Parameter(torch.zeros(num_heads, 2 * max_seq_len - 1))
        self.time_weight = nn.Parameter(torch.zeros(num_heads, len(boundaries) + 1))
        self.register_buffer("time_boundaries", torch.tensor(boundaries, dtype=torch.int64), persistent=False)

    def forward(self):
        """Return the keyword arguments ``hstu_attention`` takes for this bias."""
        return {"pos_weight": self.pos_weight, "time_weight": self.time_weight, "time_boundaries": self.time_boundaries}

    def extra_repr(self) -> str:
        return f"max_seq_len={self.max_seq_len}, num_heads={self.pos_weight.shape[0]}, boundaries={self.time_boundaries.tolist()}"
