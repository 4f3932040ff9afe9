"""The public ``hstu_cached_attention``: checks arguments, then dispatches to a backend through the op's registry.

Backends: ``"torch"`` (the naive op, CPU and GPU, differentiable) and ``"triton"`` (the fused kernel, forward
only), ``"cuda"`` (the CUDA extension, forward only, when built). ``"auto"`` takes Triton for CUDA tensors it can serve (and no gradient is
being recorded), the naive op otherwise. An explicit backend that cannot take the inputs raises a ``ValueError``
with every backend's reasons (``common/registry.py``).
"""

from typing import Dict, List, Optional

import torch

from ..common.registry import Backend, BackendRegistry
from . import cuda_impl, triton_impl
from .checks import check_hstu_cached_attention_args
from .naive import naive_hstu_cached_attention

# reasons(q, k, v, pos_weight, time_weight, time_boundaries, needs_grad); fastest first, the reference last
REGISTRY = BackendRegistry("hstu_cached_attention", [
    Backend("cuda", cuda_impl.unsupported_reasons, cuda_impl.hstu_cached_attention_cuda),
    Backend("triton", triton_impl.unsupported_reasons, triton_impl.hstu_cached_attention_triton),
    Backend("torch", lambda *a, **kw: [], naive_hstu_cached_attention, fast=False),
])
BACKENDS = REGISTRY.names


def backend_reasons(q, k, v, pos_weight=None, time_weight=None, time_boundaries=None,
                    needs_grad: bool = False) -> Dict[str, List[str]]:
    """For each backend, the reasons it cannot take these inputs (empty: it can)."""
    return REGISTRY.reasons(q, k, v, pos_weight, time_weight, time_boundaries, needs_grad)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def choose_backend(backend: str, q, k, v, k_cache, v_cache, pos_weight=None, time_weight=None,
                   time_boundaries=None) -> str:
    """Resolve ``backend`` ("auto" or a name) to one that can take the inputs, or raise a ``ValueError``."""
    grad = _needs_grad(q, k, v, k_cache, v_cache, pos_weight, time_weight)
    return REGISTRY.choose(backend, q, k, v, pos_weight, time_weight, time_boundaries, grad)


def fused_backend(q, k, v, k_cache, v_cache, pos_weight=None, time_weight=None, time_boundaries=None) -> str:
    """The fastest fused backend that can take these inputs (what ``HSTUBlock(fused=True).forward_cached``
    runs), or a ``ValueError`` listing every backend's reasons."""
    grad = _needs_grad(q, k, v, k_cache, v_cache, pos_weight, time_weight)
    return REGISTRY.fastest(q, k, v, pos_weight, time_weight, time_boundaries, grad)


def hstu_cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cand_offsets: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float = 1.0,
    scale: Optional[float] = None,
    timestamps: Optional[torch.Tensor] = None,
    query_timestamps: Optional[torch.Tensor] = None,
    cache_timestamps: Optional[torch.Tensor] = None,
    pos_weight: Optional[torch.Tensor] = None,
    time_weight: Optional[torch.Tensor] = None,
    time_boundaries: Optional[torch.Tensor] = None,
    max_attn_len: int = 0,
    backend: str = "auto",
    check: bool = True,
) -> torch.Tensor:
    """HSTU attention of candidate tokens against their users' cached history K/V (M-FALCON scoring).

    Exactly the candidate rows of ``hstu_attention`` run on each user's history followed by that user's
    candidates as ``num_targets``: each candidate (at position u = history length) sees the history within the
    window and itself, never another candidate. The meaning is written in
    ``hstu_kernels/ops/hstu_cached_attention/naive.py``.

    Args:
        q, k: ``[C, H, Dqk]``; v: ``[C, H, Dv]``: the candidates' own projections, jagged per user by
            ``cand_offsets [B+1]`` (any number per user, 0 allowed).
        k_cache: ``[Lh, H, Dqk]``; v_cache: ``[Lh, H, Dv]``: the users' cached histories, jagged by
            ``cache_offsets [B+1]``, each 0 to ``max_seq_len - 1`` long (0: a cold-start user).
        max_seq_len: sizes the position table and the default scale ``1 / max_seq_len``.
        alpha, scale, pos_weight, time_weight, time_boundaries, max_attn_len: as in ``hstu_attention``.
        timestamps: ``[C]`` the candidates' own times (the key side of their self term).
        query_timestamps: ``[C]`` the query side of the time bias (default ``timestamps``; e.g. the request time).
        cache_timestamps: ``[Lh]`` the history's times; given together with ``timestamps``.
        backend: "auto", "torch" (the naive op), "triton" (forward only) or "cuda".
        check: False skips the value checks (their host synchronisation) in hot loops.

    Returns:
        ``[C, H, Dv]`` in q's dtype.
    """
    REGISTRY.check_name(backend)
    most = check_hstu_cached_attention_args(
        q, k, v, cand_offsets, k_cache, v_cache, cache_offsets, max_seq_len, alpha=alpha, scale=scale,
        timestamps=timestamps, query_timestamps=query_timestamps, cache_timestamps=cache_timestamps,
        pos_weight=pos_weight, time_weight=time_weight, time_boundaries=time_boundaries, max_attn_len=max_attn_len,
        check_values=check,
    )
    max_cands, max_hist = most if most is not None else (None, None)
    name = choose_backend(backend, q, k, v, k_cache, v_cache, pos_weight, time_weight, time_boundaries)
    return REGISTRY.impl(name)(
        q, k, v, cand_offsets, k_cache, v_cache, cache_offsets, max_seq_len, alpha=alpha, scale=scale,
        timestamps=timestamps, query_timestamps=query_timestamps, cache_timestamps=cache_timestamps,
        pos_weight=pos_weight, time_weight=time_weight, time_boundaries=time_boundaries, max_attn_len=max_attn_len,
        max_cands=max_cands, max_hist=max_hist,
    )
