"""The HSTU attention op: ``hstu_attention`` (dispatch), ``naive.py`` (its meaning), the fast backends."""

from .checks import check_hstu_attention_args
from .interface import BACKENDS, backend_reasons, choose_backend, fast_backends_available, fused_backend, hstu_attention
from .naive import (
    hstu_mask_padded,
    hstu_positions_padded,
    hstu_scores_padded,
    masked_product,
    naive_hstu_attention,
    naive_hstu_attention_padded,
    relative_position_index,
    run_on_padded,
)

__all__ = [
    "hstu_attention", "naive_hstu_attention", "naive_hstu_attention_padded", "hstu_scores_padded", "masked_product", "run_on_padded",
    "hstu_mask_padded", "hstu_positions_padded", "relative_position_index", "check_hstu_attention_args", "BACKENDS", "backend_reasons", "choose_backend", "fused_backend",
    "fast_backends_available",
]
