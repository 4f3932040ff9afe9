"""HSTU reference model in plain PyTorch: jagged-native modules, MovieLens pipeline, training and serving.

``hstu.HSTUBlock(fused=True)`` swaps the reference attention for the fused kernels of ``hstu_kernels``.
The names below load on first use, so that ``hstu --help`` (``hstu.cli``) does not wait for torch.
"""

import importlib

_EXPORTS = {
    "FusedInputEmbedding": ".embedding", "RelativeAttentionBias": ".bias", "DEFAULT_TIME_BOUNDARIES": ".bias",
    "HSTUBlock": ".block", "HSTUEncoder": ".encoder", "HSTURecommender": ".model", "ModelConfig": ".config",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
