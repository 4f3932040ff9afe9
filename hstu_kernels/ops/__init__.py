"""One folder per op (``naive.py`` beside its fast backends) and ``common/``, what the ops share."""

from .hstu_attention import hstu_attention, naive_hstu_attention
from .hstu_cached_attention import hstu_cached_attention, naive_hstu_cached_attention

__all__ = ["hstu_attention", "naive_hstu_attention", "hstu_cached_attention", "naive_hstu_cached_attention"]
