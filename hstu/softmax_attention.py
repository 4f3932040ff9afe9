"""Softmax attention over HSTU's masked, biased scores: the ablation of the paper's pointwise SiLU attention.

The scores and the mask are the op's own (``hstu_kernels.hstu_scores_padded``); only the activation differs:
a row-wise softmax over the valid keys, and no 1 / N scale by default. It runs in PyTorch only (the fused
kernels are SiLU attention).
"""

from typing import Optional

import torch

from hstu_kernels import hstu_scores_padded, masked_product, run_on_padded


def softmax_attention_padded(q, k, v, lengths, max_seq_len: int, *, scale: Optional[float] = None,
                             **bias_and_mask) -> torch.Tensor:
    """``q, k [B, N, H, Dqk]``, ``v [B, N, H, Dv]``, ``lengths [B]`` and the keywords of ``hstu_scores_padded``
    -> ``[B, N, H, Dv]`` in q's dtype (padded rows zero)."""
    s, valid = hstu_scores_padded(q, k, lengths, max_seq_len, **bias_and_mask)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    a = torch.where(valid, s.masked_fill(~valid, torch.finfo(s.dtype).min).softmax(dim=-1), zero)
    tok = torch.arange(q.shape[1], device=q.device)[None, :] < lengths[:, None]
    vp = torch.where(tok[:, :, None, None], v.to(s.dtype), zero)
    out = masked_product(a, valid, vp)
    return (out if scale is None else scale * out).to(q.dtype)


def softmax_attention(q, k, v, seq_offsets, max_seq_len: int, **kwargs) -> torch.Tensor:
    """The jagged form: ``q, k [L, H, Dqk]``, ``v [L, H, Dv]`` by ``seq_offsets [B+1]`` -> ``[L, H, Dv]``."""
    return run_on_padded(softmax_attention_padded, q, k, v, seq_offsets, max_seq_len, **kwargs)
