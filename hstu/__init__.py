"""HSTU reference model in plain PyTorch: jagged-native modules, MovieLens pipeline, training and serving.

``hstu.HSTUBlock(fused=True)`` swaps the reference attention for the fused kernels of ``hstu_kernels``.
"""

from .bias import DEFAULT_TIME_BOUNDARIES, RelativeAttentionBias
from .block import HSTUBlock
from .embedding import FusedInputEmbedding
from .encoder import HSTUEncoder
from .model import HSTURecommender, ModelConfig

__all__ = [
    "FusedInputEmbedding", "RelativeAttentionBias", "HSTUBlock", "HSTUEncoder", "HSTURecommender", "ModelConfig",
    "DEFAULT_TIME_BOUNDARIES",
]
