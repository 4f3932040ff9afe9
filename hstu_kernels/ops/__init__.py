from .hstu_attention import hstu_attention, naive_hstu_attention

__all__ = ["hstu_attention", "naive_hstu_attention"]
