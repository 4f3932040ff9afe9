"""Dropout whose CPU mask costs a fraction of ``torch.bernoulli``'s.

On the CPU, ``F.dropout`` draws one float per element through ``bernoulli_``: on the 2-core machines the
training runs on, that was about as costly as the block's matmuls (bench/bench_train.py). Random 64-bit integers
are several times cheaper to draw, and each holds four uniform 16-bit draws, so the mask keeps an element when
its 16-bit draw clears ``round(p * 65536)``: a drop rate within 2^-17 of ``p``. On other devices ``F.dropout`` is
already fused and is used as is.
"""

import torch
import torch.nn.functional as F
from torch import nn

# use the integer mask on the CPU; False: F.dropout everywhere (bench/bench_train.py times both)
FAST_CPU = True


def keep_mask(shape, p: float, device=None) -> torch.Tensor:
    """A bool mask of ``shape``, each element True with probability ``1 - p`` (to 2^-17), from the global RNG."""
    n = 1
    for s in shape:
        n *= s
    # the whole int64 range: all 64 bits random (plain random_() leaves the sign bit 0), so every int16 lane is
    # uniform over [-32768, 32767]
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    return (words.view(torch.int16)[:n] >= -32768 + round(p * 65536)).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)`` in meaning (zeros with probability p, the rest scaled by 1 / (1 - p))."""
    if not training or p == 0.0:
        return x
    if not FAST_CPU or x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    return x * keep_mask(x.shape, p).to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the cheap CPU mask of ``hstu.dropout.dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
