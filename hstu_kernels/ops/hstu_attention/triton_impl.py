"""The Triton backend of ``hstu_attention``: autograd, ``torch.library`` custom ops, and what it can take.

Importing this module does not import Triton: the kernels (``triton_fwd``, ``triton_bwd``) load on the first call.
The forward and backward kernels are two opaque custom ops with fake (meta) implementations, so ``torch.compile``
traces a model through them without graph breaks; ``HSTUAttentionTritonFunction`` (an ``autograd.Function``) ties
them together, and the same backward is registered on the forward op with ``torch.library.register_autograd``.

fp32 inputs use exact fp32 products (``input_precision="ieee"``) unless ``set_fp32_precision("tf32")`` asks for
TF32. Under ``TRITON_INTERPRET=1`` the backend takes CPU tensors (fp32, fp16; not bf16: the interpreter's bf16
dot is wrong); otherwise it needs CUDA tensors.

Inputs only need a unit stride in the last dimension (q, k, v may be slices of a fused projection); others are
copied. Head dims 1..256 work (non-powers of two are padded to the next power of two >= 16 in registers and
masked; the fast paths are 16, 32, 64, 128, 256); Dqk and Dv may differ. Up to 16 time boundaries.
"""

from typing import Optional, Tuple

import torch

from ..common.jagged import longest_segment
from ..common.triton_support import get_fp32_precision, last_dim_unit, set_fp32_precision, triton_reasons

Tensor = torch.Tensor
# the backend's reasons are the shared Triton ones; set_fp32_precision / get_fp32_precision are re-exported here
unsupported_reasons = triton_reasons
__all__ = ["hstu_attention_triton", "unsupported_reasons", "set_fp32_precision", "get_fp32_precision",
           "HSTUAttentionTritonFunction"]


def _table_grad_shape(table: Optional[Tensor], need: bool):
    return tuple(table.shape) if table is not None and need else (0,)


# ---------------------------------------------------------------------------------------------------------------
# custom ops
# ---------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("hstu_kernels::triton_hstu_attention_fwd", mutates_args=())
def triton_hstu_attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, seq_offsets: Tensor, max_seq_len: int, max_len: int, alpha: float,
    scale: float, timestamps: Optional[Tensor], query_timestamps: Optional[Tensor], pos_weight: Optional[Tensor],
    time_weight: Optional[Tensor], time_boundaries: Optional[Tensor], num_targets: Optional[Tensor],
    max_attn_len: int, fp32_precision: str,
) -> Tuple[Tensor, Tensor]:
    """HSTU attention forward with the fused Triton kernel: (out, the longest sequence as a CPU int64 scalar).

    ``max_len < 0``: the longest sequence is read from ``seq_offsets`` (one host synchronisation); returning it
    lets the backward reuse it instead of synchronising again."""
    from .triton_fwd import hstu_attention_fwd

    q, k, v = last_dim_unit(q), last_dim_unit(k), last_dim_unit(v)
    if max_len < 0:
        max_len = longest_segment(seq_offsets)
    out = hstu_attention_fwd(
        q, k, v, seq_offsets.contiguous(), max_seq_len, max_len, alpha=alpha, scale=scale, timestamps=timestamps,
        query_timestamps=query_timestamps, pos_weight=pos_weight, time_weight=time_weight,
        time_boundaries=time_boundaries, num_targets=num_targets, max_attn_len=max_attn_len,
        fp32_precision=fp32_precision,
    )
    return out, torch.tensor(max_len, dtype=torch.int64)


@triton_hstu_attention_fwd.register_fake
def _(q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps, pos_weight,
      time_weight, time_boundaries, num_targets, max_attn_len, fp32_precision):
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2])), torch.empty((), dtype=torch.int64, device="cpu")


@torch.library.custom_op("hstu_kernels::triton_hstu_attention_bwd", mutates_args=())
def triton_hstu_attention_bwd(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, seq_offsets: Tensor, max_seq_len: int, max_len: Tensor,
    alpha: float, scale: float, timestamps: Optional[Tensor], query_timestamps: Optional[Tensor],
    pos_weight: Optional[Tensor], time_weight: Optional[Tensor], time_boundaries: Optional[Tensor],
    num_targets: Optional[Tensor], max_attn_len: int, fp32_precision: str, need_dpw: bool, need_dtw: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv, d pos_weight, d time_weight); an absent table gradient is an empty tensor.

    ``max_len``: the CPU scalar the forward returned (reading it needs no device synchronisation)."""
    from .triton_bwd import hstu_attention_bwd

    q, k, v, grad_out = last_dim_unit(q), last_dim_unit(k), last_dim_unit(v), last_dim_unit(grad_out)
    dq, dk, dv, dpw, dtw = hstu_attention_bwd(
        grad_out, q, k, v, seq_offsets.contiguous(), max_seq_len, int(max_len), alpha=alpha, scale=scale,
        timestamps=timestamps, query_timestamps=query_timestamps, pos_weight=pos_weight, time_weight=time_weight,
        time_boundaries=time_boundaries, num_targets=num_targets, max_attn_len=max_attn_len,
        need_dpw=need_dpw, need_dtw=need_dtw, fp32_precision=fp32_precision,
    )
    empty = q.new_empty((0,), dtype=torch.float32)
    return dq, dk, dv, (empty if dpw is None else dpw), (empty.clone() if dtw is None else dtw)


@triton_hstu_attention_bwd.register_fake
def _(grad_out, q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps,
      pos_weight, time_weight, time_boundaries, num_targets, max_attn_len, fp32_precision, need_dpw, need_dtw):
    dpw_dtype = pos_weight.dtype if pos_weight is not None and need_dpw else torch.float32
    dtw_dtype = time_weight.dtype if time_weight is not None and need_dtw else torch.float32
    return (
        torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
        q.new_empty(_table_grad_shape(pos_weight, need_dpw), dtype=dpw_dtype),
        q.new_empty(_table_grad_shape(time_weight, need_dtw), dtype=dtw_dtype),
    )


# ---------------------------------------------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------------------------------------------
# positions of the differentiable inputs of the forward op
_Q, _K, _V, _PW, _TW = 0, 1, 2, 10, 11
_NUM_FWD_INPUTS = 16


def _setup_context(ctx, inputs, output):
    (q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps, pos_weight,
     time_weight, time_boundaries, num_targets, max_attn_len, fp32_precision) = inputs
    ctx.save_for_backward(q, k, v, seq_offsets, timestamps, query_timestamps, pos_weight, time_weight,
                          time_boundaries, num_targets, output[1])
    ctx.hstu_args = (max_seq_len, alpha, scale, max_attn_len, fp32_precision)


def _backward(ctx, grad_out, *_):
    (q, k, v, seq_offsets, timestamps, query_timestamps, pos_weight, time_weight, time_boundaries,
     num_targets, max_len) = ctx.saved_tensors
    max_seq_len, alpha, scale, max_attn_len, fp32_precision = ctx.hstu_args
    need = ctx.needs_input_grad
    need_dpw = pos_weight is not None and bool(need[_PW])
    need_dtw = time_weight is not None and bool(need[_TW])
    dq, dk, dv, dpw, dtw = triton_hstu_attention_bwd(
        grad_out, q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps,
        pos_weight, time_weight, time_boundaries, num_targets, max_attn_len, fp32_precision, need_dpw, need_dtw,
    )
    grads = [None] * _NUM_FWD_INPUTS
    grads[_Q], grads[_K], grads[_V] = dq, dk, dv
    grads[_PW] = dpw if need_dpw else None
    grads[_TW] = dtw if need_dtw else None
    return tuple(grads)


torch.library.register_autograd(
    "hstu_kernels::triton_hstu_attention_fwd", _backward, setup_context=_setup_context
)


class HSTUAttentionTritonFunction(torch.autograd.Function):
    """Autograd for the fused kernels: forward and backward are the two custom ops above. The forward's second
    output (the longest sequence, an integer CPU scalar) carries no gradient."""

    @staticmethod
    def forward(q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps,
                pos_weight, time_weight, time_boundaries, num_targets, max_attn_len, fp32_precision):
        return triton_hstu_attention_fwd(
            q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps, pos_weight,
            time_weight, time_boundaries, num_targets, max_attn_len, fp32_precision,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_out, grad_max_len):
        return _backward(ctx, grad_out)


def hstu_attention_triton(
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
    """HSTU attention with the fused Triton kernels (same meaning and keywords as ``naive_hstu_attention``).

    ``max_len`` is the batch's longest sequence; None reads it from ``seq_offsets`` (one host synchronisation in
    the forward; the backward reuses it).
    """
    if scale is None:
        scale = 1.0 / max_seq_len
    return HSTUAttentionTritonFunction.apply(
        last_dim_unit(q), last_dim_unit(k), last_dim_unit(v), seq_offsets, int(max_seq_len),
        -1 if max_len is None else int(max_len), float(alpha), float(scale), timestamps, query_timestamps,
        pos_weight, time_weight, time_boundaries, num_targets, int(max_attn_len), get_fp32_precision(),
    )[0]
