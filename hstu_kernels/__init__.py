"""Fused GPU kernels for HSTU. Each op lives in ``hstu_kernels/ops/<op>/`` beside its naive reference.

The names here are the public API the model (``hstu/``) uses: the two ops, their references, argument checks,
backend choice, the jagged helpers, the op's mask and position index, and the bias-table lookup.
"""

from .ops.common.bias import bias_lookup, bias_table_grad
from .ops.common.jagged import jagged_to_padded
from .ops.hstu_attention import (
    backend_reasons,
    check_hstu_attention_args,
    fast_backends_available,
    fused_backend,
    hstu_attention,
    hstu_mask_padded,
    hstu_positions_padded,
    hstu_scores_padded,
    masked_product,
    naive_hstu_attention,
    naive_hstu_attention_padded,
    relative_position_index,
    run_on_padded,
)
from .ops.hstu_cached_attention import check_hstu_cached_attention_args, hstu_cached_attention, naive_hstu_cached_attention
from .ops.hstu_cached_attention import fused_backend as fused_cached_backend

__version__ = "0.1.0"
__all__ = [
    "hstu_attention", "naive_hstu_attention", "naive_hstu_attention_padded", "hstu_scores_padded", "masked_product", "run_on_padded",
    "hstu_mask_padded", "hstu_positions_padded", "relative_position_index", "check_hstu_attention_args", "backend_reasons", "fast_backends_available", "fused_backend",
    "hstu_cached_attention", "naive_hstu_cached_attention", "check_hstu_cached_attention_args",
    "fused_cached_backend", "jagged_to_padded", "bias_lookup", "bias_table_grad", "__version__",
]
