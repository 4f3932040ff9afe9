from .interface import backend_reasons, choose_backend, fast_backends_available, hstu_attention
from .naive import naive_hstu_attention, naive_hstu_attention_padded

__all__ = ["hstu_attention", "naive_hstu_attention", "naive_hstu_attention_padded", "backend_reasons", "choose_backend", "fast_backends_available"]
