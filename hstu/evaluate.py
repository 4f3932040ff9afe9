"""Full-ranking evaluation over all items (HR@K, NDCG@K, MRR) plus the rating head's RMSE/MAE.

Everything per batch stays on the scores' device: the seen-item mask is scattered there from the users' event
lists, and each target's rank is counted there (how many candidates beat it), so only ``[B]`` ranks per batch are
kept and no ``[B, num_items]`` matrix crosses to or from the host. Counting gives the exact rank that MRR needs
and the documented tie order, which a ``topk`` (ties in any order, nothing past K) would not.
"""

from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import Range
from .data.batching import JaggedBatch, eval_batch
from .data.sequences import train_item_counts
from .metrics import non_finite_rows, ranking_metrics, ranking_sums, target_ranks


def seen_mask_on(seqs, users: np.ndarray, ends: np.ndarray, width: int, device) -> torch.Tensor:
    """``data.sequences.seen_mask`` built on ``device``: bool ``[len(users), width]`` marking the items of each
    user's events ``[0, ends[i])``. Only the ``sum(ends)`` (row, item) pairs are sent, not the dense mask."""
    users = np.asarray(users, dtype=np.int64)
    counts = np.asarray(ends, dtype=np.int64)
    if ((counts < 0) | (counts > seqs.lengths()[users])).any():
        raise ValueError("ends must lie in 0..n for each user")
    first = np.cumsum(counts) - counts
    idx = np.arange(counts.sum()) - np.repeat(first - seqs.offsets[users], counts)
    rows = torch.from_numpy(np.repeat(np.arange(len(users)), counts)).to(device)
    items = torch.from_numpy(seqs.items[idx].astype(np.int64)).to(device)
    mask = torch.zeros(len(users), width, dtype=torch.bool, device=device)
    mask[rows, items] = True
    return mask


# batches of users of similar length (False: in user order, as before; bench/bench_train.py times both)
SORT_BY_LENGTH = True

ScoreFn = Callable[[JaggedBatch], Tuple[torch.Tensor, Optional[torch.Tensor]]]


@torch.no_grad()
def rank_targets(
    seqs,
    score_batch: ScoreFn,
    *,
    split: str = "test",
    max_seq_len: int = 200,
    batch_size: int = 64,
    device="cpu",
    filter_seen: bool = True,
    ks: Iterable[int] = (10, 50, 200),
    progress: bool = False,
    ctx=None,
    return_ranks: bool = False,
) -> Dict[str, float]:
    """Rank every item for each user's ``split`` target and summarise.

    ``score_batch(batch) -> (scores [B, num_items + 1], predicted ratings [B] or None)`` scores one batch (on
    ``device``). Item 0 (padding) is never a candidate; with ``filter_seen`` neither is any item the user
    already interacted with (the target excepted). A non-finite score ranks below every finite one (a target
    scored NaN ranks last); ``"non_finite_users"`` counts the users with any non-finite candidate score.

    ``ctx`` (a data-parallel ``hstu.distributed.Context``): this rank ranks its shard of the users, and the
    metrics' sums and counts are summed across the ranks, so every rank returns the metrics of all users.

    ``return_ranks``: also ``"ranks"``, int64 numpy ``[users]``, each user's 0-based target rank in ``seqs``'
    user order (for paired comparisons of two models on the same users; one process only).
    """
    Range(int, 1).check("batch_size", batch_size)
    if return_ranks and ctx is not None and ctx.active:
        raise ValueError("return_ranks is for one process: under data parallelism each rank holds a shard")
    all_ranks, sq_err, abs_err = [], [], []
    non_finite = 0
    distributed = ctx is not None and ctx.active
    mine = np.arange(len(seqs))[ctx.shard(len(seqs))] if distributed else np.arange(len(seqs))
    # users of similar history length share a batch, which then pads to about their length rather than to the
    # longest of a random batch (about half the attention work on MovieLens); the metrics are means over users
    if SORT_BY_LENGTH:
        mine = mine[np.argsort(np.minimum(seqs.lengths()[mine], max_seq_len), kind="stable")]
    starts = range(0, len(mine), batch_size)
    for start in tqdm(starts, desc=f"eval {split}", disable=not progress, leave=False):
        users = mine[start:start + batch_size]
        batch = eval_batch(seqs, users, max_seq_len, split).to(device)
        scores, rating_pred = score_batch(batch)
        rows = batch.target_rows()
        targets = batch.items[rows]
        if filter_seen:
            exclude = seen_mask_on(seqs, batch.users, batch.target_index, scores.shape[1], scores.device)
        else:
            exclude = torch.zeros_like(scores, dtype=torch.bool)
        exclude[:, 0] = True
        exclude[torch.arange(len(targets), device=device), targets] = False
        all_ranks.append(target_ranks(scores, targets, exclude))
        non_finite += int(non_finite_rows(scores, exclude).sum())
        if rating_pred is not None:
            err = rating_pred.float() - batch.ratings[rows].float()
            sq_err.append(err.square())
            abs_err.append(err.abs())
    ranks = torch.cat(all_ranks) if all_ranks else torch.zeros(0, dtype=torch.long)
    if distributed:
        return _reduced_metrics(ctx, ranks, sq_err, abs_err, non_finite, ks, device)
    out = ranking_metrics(ranks, ks)
    if sq_err:
        out["RMSE"] = torch.cat(sq_err).mean().sqrt().item()
        out["MAE"] = torch.cat(abs_err).mean().item()
    out["users"] = int(ranks.numel())
    out["non_finite_users"] = non_finite
    if return_ranks:
        in_order = np.empty(len(mine), dtype=np.int64)
        in_order[mine] = ranks.cpu().numpy()
        out["ranks"] = in_order
    return out


def _reduced_metrics(ctx, ranks, sq_err, abs_err, non_finite, ks, device) -> Dict[str, float]:
    """The metrics of all ranks' users from this rank's ``ranks`` and errors: sums and counts, summed across
    the ranks in float64 (the same numbers as one process ranking every user, to rounding)."""
    ks = tuple(ks)
    sums = ranking_sums(ranks, ks)
    names = list(sums)
    sq = torch.cat(sq_err).double().sum() if sq_err else torch.zeros((), dtype=torch.float64)
    ab = torch.cat(abs_err).double().sum() if abs_err else torch.zeros((), dtype=torch.float64)
    rated = sum(len(x) for x in sq_err)
    totals = torch.stack([*(sums[n] for n in names), sq.cpu(), ab.cpu(),
                          torch.tensor(float(rated), dtype=torch.float64),
                          torch.tensor(float(ranks.numel()), dtype=torch.float64),
                          torch.tensor(float(non_finite), dtype=torch.float64)])
    # NCCL reduces device tensors only; gloo takes either
    totals = ctx.all_reduce_sum(totals.to(device)).cpu()
    users = int(totals[-2])
    out = {n: (totals[i].item() / users if users else 0.0) for i, n in enumerate(names)}
    rated = int(totals[-3])
    if rated:
        out["RMSE"] = (totals[len(names)].item() / rated) ** 0.5
        out["MAE"] = totals[len(names) + 1].item() / rated
    out["users"] = users
    out["non_finite_users"] = int(totals[-1])
    return out


def evaluate_model(model, seqs, split: str = "test", **kwargs) -> Dict[str, float]:
    """``rank_targets`` with the model's retrieval scores and rating predictions."""
    was_training = model.training
    model.eval()

    def score(batch):
        # only these rows are scored: the last block attends for them alone
        user, target = model(batch, rows=torch.cat([batch.last_history_rows(), batch.target_rows()])).chunk(2)
        return model.retrieval_logits(user).float(), model.predict_ratings(target)

    try:
        return rank_targets(seqs, score, split=split, max_seq_len=model.config.max_seq_len, **kwargs)
    finally:
        model.train(was_training)


def evaluate_popularity(seqs, split: str = "test", **kwargs) -> Dict[str, float]:
    """The most-popular-items baseline, ranked by the same code as the model."""
    device = kwargs.get("device", "cpu")
    counts = torch.from_numpy(train_item_counts(seqs)).float().to(device)
    return rank_targets(seqs, lambda b: (counts.expand(len(b.users), -1), None), split=split, **kwargs)
