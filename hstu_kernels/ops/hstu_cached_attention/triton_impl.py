"""The Triton backend of ``hstu_cached_attention``: a ``torch.library`` custom op, forward only.

Serving needs no gradient, so there is no backward: with autograd recording and an input that requires grad,
``hstu_cached_attention(backend="triton")`` raises and ``backend="auto"`` takes the naive op. The custom op has a
fake (meta) implementation so ``torch.compile`` traces a serving model through it. Importing this module does
not import Triton; the kernel (``triton_fwd.py``) loads on the first call. What the backend can take (devices,
dtypes, head dims, boundaries) is every Triton backend's: see ``common/triton_support.py``.
"""

from typing import List, Optional

import torch

from ..common.jagged import longest_segment
from ..common.triton_support import get_fp32_precision, last_dim_unit, triton_reasons

Tensor = torch.Tensor


def unsupported_reasons(q, k, v, pos_weight=None, time_weight=None, time_boundaries=None,
                        needs_grad: bool = False) -> List[str]:
    """The reasons the Triton cached kernel cannot take these inputs (empty: it can)."""
    reasons = triton_reasons(q, k, v, pos_weight, time_weight, time_boundaries)
    if needs_grad:
        reasons.append("it has no backward (forward only, for serving): run under torch.no_grad()")
    return reasons


@torch.library.custom_op("hstu_kernels::triton_hstu_cached_attention_fwd", mutates_args=())
def triton_hstu_cached_attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, cand_offsets: Tensor, k_cache: Tensor, v_cache: Tensor, cache_offsets: Tensor,
    max_seq_len: int, max_cands: int, max_hist: int, alpha: float, scale: float, timestamps: Optional[Tensor],
    query_timestamps: Optional[Tensor], cache_timestamps: Optional[Tensor], pos_weight: Optional[Tensor],
    time_weight: Optional[Tensor], time_boundaries: Optional[Tensor], max_attn_len: int, fp32_precision: str,
) -> Tensor:
    """Cached attention with the Triton kernel. ``max_cands`` / ``max_hist`` < 0: read from the offsets."""
    from .triton_fwd import hstu_cached_attention_fwd

    if max_cands < 0:
        max_cands = longest_segment(cand_offsets)
    if max_hist < 0:
        max_hist = longest_segment(cache_offsets)
    return hstu_cached_attention_fwd(
        *(last_dim_unit(x) for x in (q, k, v)), cand_offsets, last_dim_unit(k_cache), last_dim_unit(v_cache),
        cache_offsets, max_seq_len,
        max_cands, max_hist, alpha=alpha, scale=scale, timestamps=timestamps, query_timestamps=query_timestamps,
        cache_timestamps=cache_timestamps, pos_weight=pos_weight, time_weight=time_weight,
        time_boundaries=time_boundaries, max_attn_len=max_attn_len, fp32_precision=fp32_precision,
    )


@triton_hstu_cached_attention_fwd.register_fake
def _(q, k, v, cand_offsets, k_cache, v_cache, cache_offsets, max_seq_len, max_cands, max_hist, alpha, scale,
      timestamps, query_timestamps, cache_timestamps, pos_weight, time_weight, time_boundaries, max_attn_len,
      fp32_precision):
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2]))


def hstu_cached_attention_triton(
    q: Tensor, k: Tensor, v: Tensor, cand_offsets: Tensor, k_cache: Tensor, v_cache: Tensor, cache_offsets: Tensor,
    max_seq_len: int, *, alpha: float = 1.0, scale: Optional[float] = None, timestamps: Optional[Tensor] = None,
    query_timestamps: Optional[Tensor] = None, cache_timestamps: Optional[Tensor] = None,
    pos_weight: Optional[Tensor] = None, time_weight: Optional[Tensor] = None,
    time_boundaries: Optional[Tensor] = None, max_attn_len: int = 0, max_cands: Optional[int] = None,
    max_hist: Optional[int] = None,
) -> Tensor:
    """Cached attention with the Triton kernel (same meaning and keywords as ``naive_hstu_cached_attention``).

    ``max_cands`` / ``max_hist``: the most candidates / longest history of any user; None reads them from the
    offsets (one host synchronisation each call).
    """
    if scale is None:
        scale = 1.0 / max_seq_len
    return triton_hstu_cached_attention_fwd(
        q, k, v, cand_offsets, k_cache, v_cache, cache_offsets, int(max_seq_len),
        -1 if max_cands is None else int(max_cands), -1 if max_hist is None else int(max_hist), float(alpha),
        float(scale), timestamps, query_timestamps, cache_timestamps, pos_weight, time_weight, time_boundaries,
        int(max_attn_len), get_fp32_precision(),
    )
