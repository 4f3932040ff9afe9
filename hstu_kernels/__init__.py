"""Fused GPU kernels for HSTU. Each op lives in ``hstu_kernels/ops/<op>/`` beside its naive reference."""

from .ops.hstu_attention import backend_reasons, fast_backends_available, hstu_attention, naive_hstu_attention
from .ops.hstu_cached_attention import hstu_cached_attention, naive_hstu_cached_attention

__version__ = "0.1.0"
__all__ = [
    "hstu_attention", "naive_hstu_attention", "backend_reasons", "fast_backends_available", "__version__",
    "hstu_cached_attention", "naive_hstu_cached_attention",
]
