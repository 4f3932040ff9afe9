"""Our ranking metrics (hstu.metrics) from another model's top-K lists, on our test targets.

A target at position p of its user's list has rank p (0-based), as in ``hstu.metrics.target_ranks``; a target not
in the list ranks past K. HR@k and NDCG@k for k <= K are then exact; MRR counts only the ranks within the list
(a lower bound of the full-ranking MRR, by less than 1 / (K + 1)).
"""

import numpy as np
import torch

from hstu.metrics import ranking_metrics

MISSED = 10**12  # the rank of a target outside the list: 1 / (MISSED + 1) adds nothing to MRR


def list_ranks(users, items, target_users, target_items):
    """int64 [len(target_users)]: the 0-based rank of each target in its user's list, ``MISSED`` when absent.

    ``users`` [U] raw ids with ``items`` [U, K] (padding -1); every target user must have a list."""
    row_of = {int(u): i for i, u in enumerate(users)}
    missing = [int(u) for u in target_users if int(u) not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} test users have no top-K list (first: {missing[:5]})")
    rows = items[[row_of[int(u)] for u in target_users]]
    hit = rows == np.asarray(target_items)[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), MISSED).astype(np.int64)


def topk_metrics(users, items, target_users, target_items, ks=(10, 50, 200)):
    """``ranking_metrics`` of the lists, plus ``users`` and ``K``; refuses a k above the lists' length."""
    if max(ks) > items.shape[1]:
        raise ValueError(f"top-{items.shape[1]} lists cannot give metrics at k = {max(ks)}")
    ranks = torch.from_numpy(list_ranks(users, items, target_users, target_items))
    return {**ranking_metrics(ranks, ks), "users": int(ranks.numel()), "K": int(items.shape[1])}


def per_user(ranks, metric: str) -> np.ndarray:
    """float64 [users]: each user's HR@k (0/1) or NDCG@k from 0-based target ranks."""
    name, _, k = metric.partition("@")
    r = np.asarray(ranks, dtype=np.float64)
    if name == "HR":
        return (r < int(k)).astype(np.float64)
    if name == "NDCG":
        return np.where(r < int(k), 1.0 / np.log2(r + 2.0), 0.0)
    raise ValueError(f"metric must be HR@k or NDCG@k, got {metric!r}")


def paired_difference(ranks_a, ranks_b, metric: str, resamples: int = 2000, seed: int = 0):
    """``(mean, low, high)``: model a's metric minus model b's over the same users, with the 95 % interval of a
    paired bootstrap (users resampled with replacement, both models' values kept together)."""
    diff = per_user(ranks_a, metric) - per_user(ranks_b, metric)
    if diff.size == 0:
        raise ValueError("no users to compare")
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, diff.size, diff.size)].mean() for _ in range(resamples)])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)
