from .interface import backend_reasons, check_hstu_cached_attention_args, choose_backend, hstu_cached_attention
from .naive import naive_hstu_cached_attention

__all__ = [
    "hstu_cached_attention", "naive_hstu_cached_attention", "check_hstu_cached_attention_args", "choose_backend",
    "backend_reasons",
]
