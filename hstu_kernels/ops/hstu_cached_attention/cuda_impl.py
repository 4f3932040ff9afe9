"""The CUDA C++ backend of ``hstu_cached_attention`` (M-FALCON scoring): a fake kernel and what it can take.

The kernel (``csrc/include/hstu/cached_fwd.cuh``: one CTA per (user, head, candidate block), each history K/V
tile read once per block) is exposed by ``hstu_kernels._C`` as::

    torch.ops.hstu_kernels.cuda_hstu_cached_attention_fwd   -> out [C, H, D]

Forward only, like the Triton backend: serving needs no gradient, so with autograd recording and an input that
requires grad the backend declines. What it takes (devices, dtypes, head dims, boundaries) is the attention
backend's: see ``hstu_attention/cuda_impl.py``.
"""

import importlib.util
from typing import List, Optional

import torch

from ..hstu_attention import cuda_impl as attention_cuda
from .checks import check_hstu_cached_attention_args

Tensor = torch.Tensor

_OP = "hstu_kernels::cuda_hstu_cached_attention_fwd"


def unsupported_reasons(q, k, v, pos_weight=None, time_weight=None, time_boundaries=None,
                        needs_grad: bool = False) -> List[str]:
    """The reasons the CUDA cached kernel cannot take these inputs (empty: it can)."""
    reasons = attention_cuda.unsupported_reasons(q, k, v, pos_weight, time_weight, time_boundaries)
    if needs_grad:
        reasons.append("it has no backward (forward only, for serving): run under torch.no_grad()")
    return reasons


def _fake(q, k, v, cand_offsets, k_cache, v_cache, cache_offsets, max_seq_len, max_cands, alpha, scale,
          timestamps, query_timestamps, cache_timestamps, pos_weight, time_weight, time_boundaries, max_attn_len):
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2]))


_registered = False


def register() -> None:
    """Register the fake kernel of the op (once; the op must exist in torch.ops)."""
    global _registered
    if not _registered:
        torch.library.register_fake(_OP)(_fake)
        _registered = True


def hstu_cached_attention_cuda(
    q: Tensor, k: Tensor, v: Tensor, cand_offsets: Tensor, k_cache: Tensor, v_cache: Tensor, cache_offsets: Tensor,
    max_seq_len: int, *, alpha: float = 1.0, scale: Optional[float] = None, timestamps: Optional[Tensor] = None,
    query_timestamps: Optional[Tensor] = None, cache_timestamps: Optional[Tensor] = None,
    pos_weight: Optional[Tensor] = None, time_weight: Optional[Tensor] = None,
    time_boundaries: Optional[Tensor] = None, max_attn_len: int = 0, max_cands: Optional[int] = None,
    max_hist: Optional[int] = None,
) -> Tensor:
    """Cached attention with the CUDA kernel (same meaning and keywords as ``naive_hstu_cached_attention``).

    Args:
        q, k, v: ``[C, H, D]`` bf16 / fp16 CUDA tensors, jagged per user by ``cand_offsets [B+1]``.
        k_cache, v_cache: ``[Lh, H, D]``, jagged by ``cache_offsets [B+1]``.
        timestamps, query_timestamps: ``[C]``; cache_timestamps: ``[Lh]`` (int32 / int64 seconds).
        max_cands: the most candidates of any user; None reads it from ``cand_offsets`` (one host
            synchronisation). max_hist: accepted for the registry's signature, unused (the kernel needs none).

    Returns:
        ``[C, H, D]`` in q's dtype. Shapes and dtypes are checked here; values by ``hstu_cached_attention``.
    """
    check_hstu_cached_attention_args(
        q, k, v, cand_offsets, k_cache, v_cache, cache_offsets, max_seq_len, alpha=alpha, scale=scale,
        timestamps=timestamps, query_timestamps=query_timestamps, cache_timestamps=cache_timestamps,
        pos_weight=pos_weight, time_weight=time_weight, time_boundaries=time_boundaries, max_attn_len=max_attn_len,
        check_values=False,
    )
    attention_cuda._check_supported(q, k, v, time_boundaries)
    ok, why = attention_cuda.available()
    if not ok:
        raise RuntimeError(f"hstu_cached_attention (cuda): {why}")
    register()
    if scale is None:
        scale = 1.0 / max_seq_len
    return torch.ops.hstu_kernels.cuda_hstu_cached_attention_fwd(
        q, k, v, cand_offsets, k_cache, v_cache, cache_offsets, int(max_seq_len),
        -1 if max_cands is None else int(max_cands), float(alpha), float(scale), timestamps, query_timestamps,
        cache_timestamps, pos_weight, time_weight, time_boundaries, int(max_attn_len),
    )


def _register_if_built() -> None:
    # as hstu_attention's cuda_impl: the fake kernel before torch.compile's first trace
    try:
        if importlib.util.find_spec("hstu_kernels._C") is not None and attention_cuda.available()[0]:
            register()
    except Exception:  # noqa: BLE001 - the first call reports it
        pass


_register_if_built()
