from typing import Optional

import torch
from torch import nn

from hstu_kernels.ops.hstu_attention.checks import check_hstu_attention_args

from .bias import DEFAULT_TIME_BOUNDARIES
from .block import HSTUBlock
from .embedding import FusedInputEmbedding


class HSTUEncoder(nn.Module):
    """Fused (item, action) embedding followed by ``num_layers`` HSTU blocks, jagged-native.

    ``forward(items [L], actions [L], seq_offsets [B+1], timestamps [L], num_targets [B] | None) -> [L, D]``.
    ``forward_padded`` takes ``[B, T]`` tensors and ``lengths [B]`` and returns ``[B, T, D]``.
    ``fused=True`` runs every block's attention on the fastest fused kernel (SiLU attention only).
    """

    def __init__(
        self,
        num_items: int,
        num_actions: int,
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 1,
        max_seq_len: int = 200,
        dropout: float = 0.2,
        attn_activation: str = "silu",
        max_attn_len: int = 0,
        fused: bool = False,
        *,
        per_head_bias: bool = False,
        time_boundaries=DEFAULT_TIME_BOUNDARIES,
    ):
        super().__init__()
        if fused and attn_activation != "silu":
            raise ValueError("HSTUEncoder(fused=True) supports attn_activation='silu' only: the fused kernels are SiLU attention")
        self.max_seq_len = max_seq_len
        self.embedding = FusedInputEmbedding(num_items, num_actions, dim)
        self.input_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            HSTUBlock(
                dim, num_heads, max_seq_len, dropout, attn_activation=attn_activation, fused=fused,
                max_attn_len=max_attn_len, per_head_bias=per_head_bias, time_boundaries=time_boundaries,
            )
            for _ in range(num_layers)
        )

    @property
    def item_table(self) -> torch.Tensor:
        """``[num_items + 1, D]``: the item embeddings (row 0 pads)."""
        return self.embedding.item_embedding.weight

    def forward(
        self,
        items: torch.Tensor,
        actions: torch.Tensor,
        seq_offsets: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        num_targets: Optional[torch.Tensor] = None,
        check: bool = True,
    ) -> torch.Tensor:
        x = self.input_dropout(self.embedding(items, actions))
        if check:
            # the offsets, targets and timestamps are the same for every layer: check them once
            check_hstu_attention_args(
                x[:, None], x[:, None], x[:, None], seq_offsets, self.max_seq_len, timestamps=timestamps,
                num_targets=num_targets,
            )
        for block in self.blocks:
            x = block(x, seq_offsets, timestamps, num_targets, check=False)
        return x

    def forward_padded(
        self,
        items: torch.Tensor,
        actions: torch.Tensor,
        lengths: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        num_targets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        x = self.input_dropout(self.embedding(items, actions))
        for block in self.blocks:
            x = block.forward_padded(x, lengths, timestamps, num_targets)
        return x
