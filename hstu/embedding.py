import torch
from torch import nn


class FusedInputEmbedding(nn.Module):
    """Item embedding and action embedding, concatenated, then ``Linear(2D, D) -> SiLU -> Linear(D, D)``.

    Args:
        num_items: items are ids ``1..num_items``; 0 pads.
        num_actions: size of the action vocabulary, reserved ids included (see ``hstu.actions``).
        dim: D.

    ``forward(items [...], actions [...]) -> [..., D]``. ``item_embedding.weight [num_items + 1, D]`` doubles
    as the item table of the retrieval head.
    """

    def __init__(self, num_items: int, num_actions: int, dim: int):
        super().__init__()
        if num_items < 1 or num_actions < 2 or dim < 1:
            raise ValueError(f"need num_items >= 1, num_actions >= 2, dim >= 1; got {num_items}, {num_actions}, {dim}")
        self.num_items, self.num_actions, self.dim = num_items, num_actions, dim
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.action_embedding = nn.Embedding(num_actions, dim, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.normal_(self.item_embedding.weight, std=dim**-0.5)
        nn.init.normal_(self.action_embedding.weight, std=dim**-0.5)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
            self.action_embedding.weight[0].zero_()

    def forward(self, items: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if items.shape != actions.shape:
            raise ValueError(f"items and actions must have one shape, got {tuple(items.shape)} and {tuple(actions.shape)}")
        return self.mlp(torch.cat([self.item_embedding(items), self.action_embedding(actions)], dim=-1))
