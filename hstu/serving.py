"""Inference helpers: load a checkpoint with its data, recommend for one user."""

from typing import List, Optional

import numpy as np
import torch

from .actions import UNKNOWN, actions_from_ratings
from .checkpoint import load_checkpoint
from .model import HSTURecommender
from .train import load_sequences, resolve_device


def load_for_inference(checkpoint, data_dir: Optional[str] = None, dataset: str = "ml-1m", device: str = "auto"):
    """-> (model in eval mode, MovieLensData, leave-one-out UserSequences, device). The data folder defaults to
    the one the checkpoint was trained on; its items must be the checkpoint's."""
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, map_location=dev)
    data, seqs = load_sequences(data_dir or ckpt["data_dir"], dataset)
    if data.item_ids.tolist() != list(ckpt["item_ids"]):
        raise ValueError(
            f"the items in {data.data_dir} differ from those {checkpoint} was trained on ({ckpt['data_dir']}): "
            "pass the training data with --data-dir"
        )
    model = HSTURecommender.from_config(ckpt["model_config"]).to(dev)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, data, seqs, dev


@torch.no_grad()
def recommend(model, data, user_id: int, k: int = 10, exclude_seen: bool = True, device="cpu") -> List[dict]:
    """Top-``k`` items for MovieLens user ``user_id`` after their whole history (most recent ``max_seq_len - 1``
    events): ``[{"item": raw id, "title", "score": retrieval logit, "rating": predicted rating}]``, best first.

    The predicted ratings come from one more pass with the ``k`` items as target tokens after the history
    (targets never see each other, so one pass scores them all)."""
    seqs = data.sequences
    pos = int(np.searchsorted(seqs.user_ids, user_id))
    if pos >= len(seqs.user_ids) or seqs.user_ids[pos] != user_id:
        raise ValueError(f"--user {user_id}: no such user in {data.data_dir} (ids {seqs.user_ids[0]}..{seqs.user_ids[-1]})")
    if k < 1:
        raise ValueError(f"-k must be >= 1, got {k}")
    lo, hi = seqs.offsets[pos], seqs.offsets[pos + 1]
    lo = max(lo, hi - (model.config.max_seq_len - 1))
    items = torch.from_numpy(seqs.items[lo:hi]).to(device)
    actions = torch.from_numpy(actions_from_ratings(seqs.ratings[lo:hi])).to(device)
    stamps = torch.from_numpy(seqs.timestamps[lo:hi]).to(device)
    n = len(items)
    out = model.encoder(items, actions, torch.tensor([0, n], device=device), stamps)
    scores = model.retrieval_logits(out[-1]).float()
    scores[0] = float("-inf")
    if exclude_seen:
        scores[torch.from_numpy(seqs.items[seqs.offsets[pos]:seqs.offsets[pos + 1]]).to(device)] = float("-inf")
    k = min(k, int(torch.isfinite(scores).sum()))
    top = scores.topk(k)
    cand = top.indices
    full = model.encoder(
        torch.cat([items, cand]), torch.cat([actions, torch.full_like(cand, UNKNOWN)]),
        torch.tensor([0, n + k], device=device), torch.cat([stamps, stamps[-1:].expand(k)]),
        num_targets=torch.tensor([k], device=device),
    )
    ratings = model.predict_ratings(full[n:]).float().cpu()
    return [
        {"item": int(data.item_ids[i - 1]), "title": data.titles.get(int(i), f"item {int(i)}"), "score": float(s),
         "rating": float(r)}
        for i, s, r in zip(cand.cpu(), top.values.cpu(), ratings)
    ]
