"""The public ``hstu_attention``: checks arguments, then dispatches to a backend.

Each backend answers, for given inputs, the reasons it cannot take them (an empty list: it can). ``auto``
takes the first fast backend with no reasons on CUDA tensors and the naive op otherwise; an explicit backend
that cannot take the inputs raises a ``ValueError`` listing every backend's reasons.
"""

from typing import Callable, Dict, List, Optional

import torch

# triton_impl imports Triton only when a kernel first runs: `import hstu_kernels` never needs Triton
from . import triton_impl
from .checks import check_hstu_attention_args
from .naive import naive_hstu_attention

BACKENDS = ("auto", "torch", "triton", "cuda")
# fastest first: the order "auto" and fused blocks try them in
FAST_BACKENDS = ("cuda", "triton")


def _unavailable(why: str) -> Callable[..., List[str]]:
    return lambda *args, **kwargs: [why]


# name -> (reasons(q, k, v, pos_weight, time_weight, time_boundaries) -> list of str, implementation)
_REGISTRY: Dict[str, tuple] = {
    "torch": (lambda *a, **kw: [], naive_hstu_attention),
    # functions bound here, not looked up per call, so torch.compile traces dispatch without graph breaks
    "triton": (triton_impl.unsupported_reasons, triton_impl.hstu_attention_triton),
    "cuda": (_unavailable("the CUDA extension is not built (no CUDA kernels exist yet)"), None),
}


def register_backend(name: str, reasons: Callable[..., List[str]], impl: Callable[..., torch.Tensor]) -> None:
    """Install a backend: ``reasons(q, k, v, pos_weight, time_weight, time_boundaries)`` and its op."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(_REGISTRY)}")
    _REGISTRY[name] = (reasons, impl)


def backend_reasons(q, k, v, pos_weight=None, time_weight=None, time_boundaries=None) -> Dict[str, List[str]]:
    """For each backend, the reasons it cannot take these inputs (empty: it can)."""
    return {name: reasons(q, k, v, pos_weight, time_weight, time_boundaries) for name, (reasons, _) in _REGISTRY.items()}


def fast_backends_available() -> Dict[str, List[str]]:
    """For each fast backend, the reasons it can take no input at all on this machine (empty: it may)."""
    probe = torch.empty(0, 1, 16)
    out = {}
    for name in FAST_BACKENDS:
        reasons = _REGISTRY[name][0](probe, probe, probe, None, None, None)
        # a backend that only objects to CPU tensors may still serve CUDA tensors
        out[name] = [r for r in reasons if "CUDA tensors" not in r] if torch.cuda.is_available() else reasons
    return out


def _format(reasons: Dict[str, List[str]]) -> str:
    return "; ".join(f"{name}: {', '.join(r) if r else 'available'}" for name, r in reasons.items())


def choose_backend(backend: str, q, k, v, pos_weight=None, time_weight=None, time_boundaries=None) -> str:
    """Resolve ``backend`` to a backend that can take the inputs, or raise a ``ValueError`` with every reason.

    ``"fast"`` (for fused blocks, not accepted by ``hstu_attention``) means the fastest fast backend.
    """
    if backend not in BACKENDS and backend != "fast":
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    reasons = backend_reasons(q, k, v, pos_weight, time_weight, time_boundaries)
    if backend in ("auto", "fast"):
        if backend == "fast" or q.is_cuda:
            for name in FAST_BACKENDS:
                if not reasons[name]:
                    return name
        if backend == "fast":
            raise ValueError(f"no fused (fast) backend can take these inputs: {_format(reasons)}")
        return "torch"
    if reasons[backend]:
        ok = [name for name, r in reasons.items() if not r]
        raise ValueError(
            f"backend {backend!r} cannot take these inputs ({', '.join(reasons[backend])}); "
            f"available: {', '.join(ok)}. All backends: {_format(reasons)}"
        )
    return backend


def hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float = 1.0,
    scale: Optional[float] = None,
    timestamps: Optional[torch.Tensor] = None,
    query_timestamps: Optional[torch.Tensor] = None,
    pos_weight: Optional[torch.Tensor] = None,
    time_weight: Optional[torch.Tensor] = None,
    time_boundaries: Optional[torch.Tensor] = None,
    num_targets: Optional[torch.Tensor] = None,
    max_attn_len: int = 0,
    backend: str = "auto",
    check: bool = True,
) -> torch.Tensor:
    """HSTU attention (SiLU, causal, target-aware, relative position + time bias) over a jagged batch.

    The meaning is written once in ``hstu_kernels/ops/hstu_attention/naive.py``.

    Args:
        q, k: ``[L, H, Dqk]``; v: ``[L, H, Dv]``; fp16, bf16, fp32 (or fp64 for the torch backend).
        seq_offsets: ``[B+1]`` int32/int64, ``0 = o_0 <= o_1 <= ... <= o_B = L``; empty sequences are valid.
        max_seq_len: sizes the position table and the default scale ``1 / max_seq_len``; every position
            ``p(i) = min(i, n - num_targets)`` must be below it.
        alpha: multiplies ``q . k``. scale: multiplies the output (default ``1 / max_seq_len``).
        timestamps: ``[L]`` int64 seconds (keys' times, and queries' unless query_timestamps is given).
        query_timestamps: ``[L]`` int64 seconds used for the query side of the time bias.
        pos_weight: ``[Hb, 2 * max_seq_len - 1]`` with Hb in {1, H}. time_weight: ``[Hb, len(time_boundaries) + 1]``.
        time_boundaries: ``[nb]`` sorted int64 seconds; bucket(x) = number of boundaries <= x.
        num_targets: ``[B]`` int, ``0 <= num_targets[b] <= n_b``: the last ones of each sequence are targets,
            which see the history and themselves, never each other.
        max_attn_len: 0 for full causal attention, else a window on positions (the diagonal stays valid).
        backend: "auto", "torch" (the naive op), "triton" or "cuda".
        check: False skips the value checks (their host synchronisation) in hot loops.

    Returns:
        ``[L, H, Dv]`` in q's dtype.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    longest = check_hstu_attention_args(
        q, k, v, seq_offsets, max_seq_len, alpha=alpha, scale=scale, timestamps=timestamps,
        query_timestamps=query_timestamps, pos_weight=pos_weight, time_weight=time_weight,
        time_boundaries=time_boundaries, num_targets=num_targets, max_attn_len=max_attn_len, check_values=check,
    )
    name = choose_backend(backend, q, k, v, pos_weight, time_weight, time_boundaries)
    impl = _REGISTRY[name][1]
    return impl(
        q, k, v, seq_offsets, max_seq_len, alpha=alpha, scale=scale, timestamps=timestamps,
        query_timestamps=query_timestamps, pos_weight=pos_weight, time_weight=time_weight,
        time_boundaries=time_boundaries, num_targets=num_targets, max_attn_len=max_attn_len, max_len=longest,
    )
