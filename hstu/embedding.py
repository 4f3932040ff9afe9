from typing import Optional

import torch
from torch import nn

from .config import INPUT_MODES


class FusedInputEmbedding(nn.Module):
    """The input token of each event from its item and its action.

    Args:
        num_items: items are ids ``1..num_items``; 0 pads.
        num_actions: size of the action vocabulary, reserved ids included (see ``hstu.actions``).
        dim: D.
        mode: ``"mlp"``: item and action embeddings concatenated, then ``Linear(2D, D) -> SiLU -> Linear(D, D)``;
            ``"sum"``: ``item * sqrt(D) + action``, so the input lies in the output item table's space.
        max_positions: rows of a learned absolute position embedding added to the token (0: none); positions
            past the last row take the last row.
        init_std: std of the normal init of the item and action tables (0: ``D ** -0.5``).

    ``forward(items [...], actions [...], positions [...] | None) -> [..., D]``. ``item_embedding.weight
    [num_items + 1, D]`` doubles as the item table of the retrieval head.
    """

    def __init__(self, num_items: int, num_actions: int, dim: int, mode: str = "mlp", max_positions: int = 0,
                 init_std: float = 0.0):
        super().__init__()
        if num_items < 1 or num_actions < 2 or dim < 1:
            raise ValueError(f"need num_items >= 1, num_actions >= 2, dim >= 1; got {num_items}, {num_actions}, {dim}")
        if mode not in INPUT_MODES:
            raise ValueError(f"mode must be one of {', '.join(INPUT_MODES)}, got {mode!r}")
        if max_positions < 0 or init_std < 0:
            raise ValueError(f"need max_positions >= 0 and init_std >= 0, got {max_positions} and {init_std}")
        self.num_items, self.num_actions, self.dim, self.mode = num_items, num_actions, dim, mode
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.action_embedding = nn.Embedding(num_actions, dim, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.SiLU(), nn.Linear(dim, dim)) if mode == "mlp" else None
        self.position_embedding = nn.Embedding(max_positions, dim) if max_positions else None
        std = init_std or dim**-0.5
        nn.init.normal_(self.item_embedding.weight, std=std)
        nn.init.normal_(self.action_embedding.weight, std=std)
        if self.position_embedding is not None:
            nn.init.normal_(self.position_embedding.weight, std=std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
            self.action_embedding.weight[0].zero_()

    def forward(self, items: torch.Tensor, actions: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        if items.shape != actions.shape:
            raise ValueError(f"items and actions must have one shape, got {tuple(items.shape)} and {tuple(actions.shape)}")
        if self.mlp is not None:
            x = self.mlp(torch.cat([self.item_embedding(items), self.action_embedding(actions)], dim=-1))
        else:
            x = self.item_embedding(items) * self.dim**0.5 + self.action_embedding(actions)
        if self.position_embedding is not None:
            if positions is None or positions.shape != items.shape:
                raise ValueError(f"positions must have the items' shape {tuple(items.shape)} with a position embedding, "
                                 f"got {None if positions is None else tuple(positions.shape)}")
            x = x + self.position_embedding(positions.clamp(max=self.position_embedding.num_embeddings - 1))
        return x
