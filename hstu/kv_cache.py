"""The per-layer key/value cache of encoded user histories, for M-FALCON candidate scoring."""

from dataclasses import dataclass
from typing import List, Optional

import torch


@dataclass(frozen=True)
class KVCache:
    """What ``HSTUEncoder.prefill`` keeps of a batch of user histories.

    Attributes:
        k, v: one ``[Lh, H, d]`` tensor per layer: each block's keys and values of the history tokens.
        seq_offsets: ``[B+1]`` int64 cumulative history lengths (jagged layout of ``k``, ``v``, ``timestamps``).
        lengths: ``[B]`` int64 history lengths m (0: a cold-start user).
        timestamps: ``[Lh]`` int64 seconds of the history events, or None (then no time bias anywhere).
        last_output: ``[B, D]`` encoder output at each user's last history position, the user vector for
            retrieval (zeros for a cold-start user).
        max_len: the longest history (a host int, so scoring needs no synchronisation to learn it).

    Scoring reads the cache and never writes it: microbatches can run in any order, several at once.
    """

    k: List[torch.Tensor]
    v: List[torch.Tensor]
    seq_offsets: torch.Tensor
    lengths: torch.Tensor
    timestamps: Optional[torch.Tensor]
    last_output: torch.Tensor
    max_len: int

    @property
    def num_users(self) -> int:
        return self.lengths.shape[0]

    @property
    def num_layers(self) -> int:
        return len(self.k)

    def request_times(self) -> torch.Tensor:
        """``[B]`` each user's last history timestamp (0 for a cold-start user or without timestamps)."""
        last = (self.seq_offsets[1:] - 1).clamp(min=0)
        if self.timestamps is None or self.timestamps.shape[0] == 0:
            return torch.zeros_like(self.lengths)
        return torch.where(self.lengths > 0, self.timestamps[last].to(torch.int64), torch.zeros_like(self.lengths))
