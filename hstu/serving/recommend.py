"""MovieLens recommendations for one user: their history, then ``Ranker``'s top items with titles."""

import numpy as np
import torch

from ..actions import actions_from_ratings
from ..config import ArgumentError
from .ranker import Ranker


def user_history(data, user_id: int):
    """MovieLens user ``user_id``'s events, oldest first: ``(items, actions, timestamps)`` int64 numpy arrays.
    ValueError for an unknown user."""
    seqs = data.sequences
    pos = int(np.searchsorted(seqs.user_ids, user_id))
    if pos >= len(seqs.user_ids) or seqs.user_ids[pos] != user_id:
        raise ArgumentError("user_id", f"no such user {user_id} in {data.data_dir} "
                            f"(ids {seqs.user_ids[0]}..{seqs.user_ids[-1]})")
    lo, hi = seqs.offsets[pos], seqs.offsets[pos + 1]
    return seqs.items[lo:hi], actions_from_ratings(seqs.ratings[lo:hi]), seqs.timestamps[lo:hi]


def recommend(
    model,
    data,
    user_id: int,
    k: int = 10,
    exclude_seen: bool = True,
    device="cpu",
    *,
    ranker: Ranker | None = None,
    **ranker_kwargs,
) -> list[dict]:
    """Top-``k`` items for MovieLens user ``user_id`` after their whole history (scored on its most recent
    ``max_seq_len - 1`` events), ranked by ``ranker`` (default: ``Ranker(model, device=device, **ranker_kwargs)``).

    Returns ``[{"item": raw id, "title", "score": retrieval logit, "rating": predicted rating, "final": blend}]``,
    best first.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ArgumentError("k", f"must be an integer >= 1, got {k!r}")
    items, actions, stamps = user_history(data, user_id)
    if ranker is None:
        ranker = Ranker(model, device=device, **ranker_kwargs)
    dev = ranker.device
    ranking = ranker.rank(
        torch.from_numpy(items).to(dev), torch.from_numpy(actions).to(dev), torch.tensor([0, len(items)], device=dev),
        torch.from_numpy(stamps).to(dev), k=k, exclude_seen=exclude_seen,
    )
    return [
        {"item": int(data.item_ids[i - 1]), "title": data.titles.get(i, f"item {i}"), "score": s, "rating": r,
         "final": f}
        for i, s, r, f in zip(ranking.items.tolist(), ranking.retrieval.float().tolist(),
                              ranking.ratings.float().tolist(), ranking.final.float().tolist())
    ]
