"""The public ``hstu_attention``: checks arguments, then dispatches to a backend through the op's registry.

Each backend answers, for given inputs, the reasons it cannot take them (an empty list: it can). ``auto``
takes the first fast backend with no reasons on CUDA tensors and the naive op otherwise; an explicit backend
that cannot take the inputs raises a ``ValueError`` listing every backend's reasons (``common/registry.py``).
"""

from typing import Dict, List, Optional

import torch

from ..common.registry import Backend, BackendRegistry

# the backends import Triton / load the CUDA extension only when first asked: `import hstu_kernels` needs neither
from . import cuda_impl, triton_impl
from .checks import check_hstu_attention_args
from .naive import naive_hstu_attention

# reasons(q, k, v, pos_weight, time_weight, time_boundaries); fastest first, the reference last.
# Functions are bound here, not looked up per call, so torch.compile traces dispatch without graph breaks.
REGISTRY = BackendRegistry("hstu_attention", [
    Backend("cuda", cuda_impl.unsupported_reasons, cuda_impl.hstu_attention_cuda),
    Backend("triton", triton_impl.unsupported_reasons, triton_impl.hstu_attention_triton),
    Backend("torch", lambda *a, **kw: [], naive_hstu_attention, fast=False),
])
BACKENDS = REGISTRY.names


def backend_reasons(q, k, v, pos_weight=None, time_weight=None, time_boundaries=None) -> Dict[str, List[str]]:
    """For each backend, the reasons it cannot take these inputs (empty: it can)."""
    return REGISTRY.reasons(q, k, v, pos_weight, time_weight, time_boundaries)


def choose_backend(backend: str, q, k, v, pos_weight=None, time_weight=None, time_boundaries=None) -> str:
    """Resolve ``backend`` ("auto" or a name) to a backend that can take the inputs, or raise a ``ValueError``."""
    return REGISTRY.choose(backend, q, k, v, pos_weight, time_weight, time_boundaries)


def fused_backend(q, k, v, pos_weight=None, time_weight=None, time_boundaries=None) -> str:
    """The fastest fused backend that can take these inputs (what ``HSTUBlock(fused=True)`` runs), or a
    ``ValueError`` listing every backend's reasons."""
    return REGISTRY.fastest(q, k, v, pos_weight, time_weight, time_boundaries)


def fast_backends_available() -> Dict[str, List[str]]:
    """For each fast backend, the reasons it can take no input at all on this machine (empty: it may)."""
    # a backend is available when it takes one of these: fp32 at D = 16 (the interpreter's) or bf16 at D = 64
    probes = [torch.empty(0, 1, 16), torch.empty(0, 1, 64, dtype=torch.bfloat16)]
    return REGISTRY.available([(p, p, p, None, None, None) for p in probes], cuda=torch.cuda.is_available())


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
    REGISTRY.check_name(backend)
    longest = check_hstu_attention_args(
        q, k, v, seq_offsets, max_seq_len, alpha=alpha, scale=scale, timestamps=timestamps,
        query_timestamps=query_timestamps, pos_weight=pos_weight, time_weight=time_weight,
        time_boundaries=time_boundaries, num_targets=num_targets, max_attn_len=max_attn_len, check_values=check,
    )
    name = choose_backend(backend, q, k, v, pos_weight, time_weight, time_boundaries)
    return REGISTRY.impl(name)(
        q, k, v, seq_offsets, max_seq_len, alpha=alpha, scale=scale, timestamps=timestamps,
        query_timestamps=query_timestamps, pos_weight=pos_weight, time_weight=time_weight,
        time_boundaries=time_boundaries, num_targets=num_targets, max_attn_len=max_attn_len, max_len=longest,
    )
