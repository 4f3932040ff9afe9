"""The CUDA C++ backend of ``hstu_attention``: autograd, fake kernels, and what it can take.

The kernels live in ``csrc/`` (``csrc/include/hstu``: torch-free headers; ``csrc/hstu_attention/launch.cu``: the
torch launcher) and are exposed by the extension ``hstu_kernels._C`` as two ops with schemas
(``csrc/bindings.cpp``)::

    torch.ops.hstu_kernels.cuda_hstu_attention_fwd   -> out [L, H, D]
    torch.ops.hstu_kernels.cuda_hstu_attention_bwd   -> (dq, dk, dv, d pos_weight, d time_weight)

This module registers their fake (meta) kernels, so ``torch.compile`` traces through them without graph breaks,
and the backward on the forward op with ``torch.library.register_autograd``; ``HSTUAttentionCUDAFunction`` (an
``autograd.Function``) ties the two together the same way, as the Triton backend does. Importing it never
builds or loads anything: the extension is loaded on the first ``unsupported_reasons`` / call
(``hstu_kernels/ops/common/cuda_ext.py``).

What it takes: CUDA tensors on compute capability >= 8.0, bf16 or fp16 q/k/v (any float dtype for the tables,
whose gradients come back in their dtype), Dqk == Dv in the head dims the build compiled (64 and 128 by default),
up to 16 time boundaries. Any strides with a unit stride in D (others are copied). dq accumulates in fp32.

Deterministic mode (``set_deterministic(True)``, or ``torch.use_deterministic_algorithms(True)``): the backward
uses no atomics, so its results are bitwise reproducible; it costs a second pass for dq and a workspace of
``4 * H * (B + L / 128 + 1) * min(max_len, max_seq_len)`` bytes for d pos_weight.
"""

import importlib.util
from typing import List, Optional, Tuple

import torch

from ..common import cuda_ext
from .checks import check_hstu_attention_args

Tensor = torch.Tensor

MAX_BOUNDARIES = 16
DTYPES = (torch.bfloat16, torch.float16)
_FWD = "hstu_kernels::cuda_hstu_attention_fwd"
_BWD = "hstu_kernels::cuda_hstu_attention_bwd"

_deterministic = False


def set_deterministic(flag: bool) -> None:
    """Opt in (True) or out of the atomic-free, bitwise reproducible backward."""
    global _deterministic
    _deterministic = bool(flag)


def deterministic() -> bool:
    """Whether the backward runs deterministically (this module's flag or torch's deterministic algorithms)."""
    return _deterministic or torch.are_deterministic_algorithms_enabled()


def available() -> Tuple[bool, str]:
    """(whether the extension is loaded and its ops are registered here, why not)."""
    module, why = cuda_ext.extension()
    if module is None:
        return False, why
    register()
    return True, ""


def unsupported_reasons(q, k, v, pos_weight=None, time_weight=None, time_boundaries=None) -> List[str]:
    """The reasons the CUDA backend cannot take these inputs (empty: it can)."""
    ok, why = available()
    reasons = [] if ok else [why]
    if q.device.type != "cuda":
        reasons.append(f"needs CUDA tensors, got {q.device.type} tensors")
    elif torch.cuda.get_device_capability(q.device)[0] < 8:
        reasons.append("needs compute capability >= 8.0 (mma.sync bf16/fp16)")
    if q.dtype not in DTYPES:
        reasons.append(f"{str(q.dtype).replace('torch.', '')} not supported (bfloat16 and float16 only)")
    dqk, dv = q.shape[-1], v.shape[-1]
    if dqk != dv:
        reasons.append(f"needs Dqk == Dv (got {dqk} and {dv})")
    if ok:
        dims = cuda_ext.built_head_dims()
        if dqk not in dims:
            reasons.append(f"head dim {dqk} not built (built: {', '.join(map(str, dims))})")
    if time_boundaries is not None and time_boundaries.shape[0] > MAX_BOUNDARIES:
        reasons.append(f"more than {MAX_BOUNDARIES} time boundaries ({time_boundaries.shape[0]})")
    return reasons


def _table_grad(table: Optional[Tensor], need: bool) -> Tuple[tuple, torch.dtype]:
    if table is not None and need:
        return tuple(table.shape), table.dtype
    return (0,), torch.float32


# ---------------------------------------------------------------------------------------------------------------
# fake kernels and autograd of the C++ ops
# ---------------------------------------------------------------------------------------------------------------
def _fwd_fake(q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps, pos_weight,
              time_weight, time_boundaries, num_targets, max_attn_len):
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2]))


def _bwd_fake(grad_out, q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps,
              pos_weight, time_weight, time_boundaries, num_targets, max_attn_len, need_dpw, need_dtw, deterministic):
    (pw_shape, pw_dtype), (tw_shape, tw_dtype) = _table_grad(pos_weight, need_dpw), _table_grad(time_weight, need_dtw)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), q.new_empty(pw_shape, dtype=pw_dtype),
            q.new_empty(tw_shape, dtype=tw_dtype))


# positions of the differentiable inputs of the forward op
_Q, _K, _V, _PW, _TW = 0, 1, 2, 10, 11
_NUM_FWD_INPUTS = 15


def _setup_context(ctx, inputs, output):
    (q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps, pos_weight,
     time_weight, time_boundaries, num_targets, max_attn_len) = inputs
    ctx.save_for_backward(q, k, v, seq_offsets, timestamps, query_timestamps, pos_weight, time_weight,
                          time_boundaries, num_targets)
    ctx.hstu_args = (max_seq_len, max_len, alpha, scale, max_attn_len)


def _backward(ctx, grad_out):
    (q, k, v, seq_offsets, timestamps, query_timestamps, pos_weight, time_weight, time_boundaries,
     num_targets) = ctx.saved_tensors
    max_seq_len, max_len, alpha, scale, max_attn_len = ctx.hstu_args
    need = ctx.needs_input_grad
    need_dpw = pos_weight is not None and bool(need[_PW])
    need_dtw = time_weight is not None and bool(need[_TW])
    dq, dk, dv, dpw, dtw = torch.ops.hstu_kernels.cuda_hstu_attention_bwd(
        grad_out, q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps,
        pos_weight, time_weight, time_boundaries, num_targets, max_attn_len, need_dpw, need_dtw, deterministic(),
    )
    grads = [None] * _NUM_FWD_INPUTS
    grads[_Q], grads[_K], grads[_V] = dq, dk, dv
    grads[_PW] = dpw if need_dpw else None
    grads[_TW] = dtw if need_dtw else None
    return tuple(grads)


_registered = False


def register() -> None:
    """Register the fake kernels and the autograd of the ops (once; the ops must exist in torch.ops)."""
    global _registered
    if _registered:
        return
    torch.library.register_fake(_FWD)(_fwd_fake)
    torch.library.register_fake(_BWD)(_bwd_fake)
    torch.library.register_autograd(_FWD, _backward, setup_context=_setup_context)
    _registered = True


class HSTUAttentionCUDAFunction(torch.autograd.Function):
    """Autograd for the CUDA kernels: forward and backward are the two C++ ops."""

    @staticmethod
    def forward(q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps,
                pos_weight, time_weight, time_boundaries, num_targets, max_attn_len):
        return torch.ops.hstu_kernels.cuda_hstu_attention_fwd(
            q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps, pos_weight,
            time_weight, time_boundaries, num_targets, max_attn_len,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_out):
        return _backward(ctx, grad_out)


def _check_supported(q, k, v, time_boundaries) -> None:
    """The CUDA-specific limits as TypeError / ValueError naming the argument (after the op's own checks)."""
    if q.dtype not in DTYPES:
        raise TypeError(f"q, k, v must be bfloat16 or float16 for the CUDA backend, got {q.dtype}")
    if q.shape[-1] != v.shape[-1]:
        raise ValueError(f"v must have q's head dim for the CUDA backend (Dqk == Dv), got {q.shape[-1]} and "
                         f"{v.shape[-1]}")
    if time_boundaries is not None and time_boundaries.shape[0] > MAX_BOUNDARIES:
        raise ValueError(f"time_boundaries has {time_boundaries.shape[0]} entries; the CUDA backend takes at most "
                         f"{MAX_BOUNDARIES}")


def hstu_attention_cuda(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    seq_offsets: Tensor,
    max_seq_len: int,
    *,
    alpha: float = 1.0,
    scale: Optional[float] = None,
    timestamps: Optional[Tensor] = None,
    query_timestamps: Optional[Tensor] = None,
    pos_weight: Optional[Tensor] = None,
    time_weight: Optional[Tensor] = None,
    time_boundaries: Optional[Tensor] = None,
    num_targets: Optional[Tensor] = None,
    max_attn_len: int = 0,
    max_len: Optional[int] = None,
) -> Tensor:
    """HSTU attention with the CUDA kernels (same meaning and keywords as ``naive_hstu_attention``).

    Args:
        q, k, v: ``[L, H, D]`` bf16 / fp16 CUDA tensors (D a built head dim), jagged by ``seq_offsets [B+1]``.
        timestamps, query_timestamps: ``[L]`` int32 / int64 seconds. pos_weight: ``[Hb, 2 * max_seq_len - 1]``;
        time_weight: ``[Hb, len(time_boundaries) + 1]`` (Hb in {1, H}, any float dtype); time_boundaries:
        ``[nb <= 16]`` sorted ints. num_targets: ``[B]`` ints.
        max_len: the batch's longest sequence; None reads it from ``seq_offsets`` (one host synchronisation).

    Returns:
        ``[L, H, D]`` in q's dtype. Shapes and dtypes are checked here (no host synchronisation); the values
        (offsets, targets, positions) are checked by ``hstu_attention``.
    """
    check_hstu_attention_args(
        q, k, v, seq_offsets, max_seq_len, alpha=alpha, scale=scale, timestamps=timestamps,
        query_timestamps=query_timestamps, pos_weight=pos_weight, time_weight=time_weight,
        time_boundaries=time_boundaries, num_targets=num_targets, max_attn_len=max_attn_len, check_values=False,
    )
    _check_supported(q, k, v, time_boundaries)
    ok, why = available()
    if not ok:
        raise RuntimeError(f"hstu_attention (cuda): {why}")
    if scale is None:
        scale = 1.0 / max_seq_len
    return HSTUAttentionCUDAFunction.apply(
        q, k, v, seq_offsets, int(max_seq_len), -1 if max_len is None else int(max_len), float(alpha), float(scale),
        timestamps, query_timestamps, pos_weight, time_weight, time_boundaries, num_targets, int(max_attn_len),
    )


def _register_if_built() -> None:
    # torch.compile needs the fake kernels before it traces a first call (it cannot trace their registration):
    # register them at import when the extension is built; a JIT build stays lazy, and a broken build stays
    # the backend's reason instead of breaking the import
    try:
        if importlib.util.find_spec("hstu_kernels._C") is not None:
            available()
    except Exception:  # noqa: BLE001 - the first call reports it
        pass


_register_if_built()
