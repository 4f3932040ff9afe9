"""The M-FALCON cached-attention op: ``hstu_cached_attention`` (dispatch), ``naive.py`` (its meaning), Triton."""

from .checks import check_hstu_cached_attention_args
from .interface import BACKENDS, backend_reasons, choose_backend, fused_backend, hstu_cached_attention
from .naive import naive_hstu_cached_attention

__all__ = [
    "hstu_cached_attention", "naive_hstu_cached_attention", "check_hstu_cached_attention_args", "BACKENDS",
    "backend_reasons", "choose_backend", "fused_backend",
]
