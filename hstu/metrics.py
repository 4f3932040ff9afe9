"""Ranking metrics from the 0-based rank of each user's target among the scored items."""

from typing import Dict, Iterable, Optional

import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
    """0-based rank of each target among the candidates that are not excluded.

    Args:
        scores: ``[B, M]`` float, one column per item id.
        targets: ``[B]`` int64 item ids.
        exclude: ``[B, M]`` bool, items removed from the ranking (the target itself is never removed).

    A candidate tied with the target ranks above it when its id is smaller: ties neither flatter a model that
    scores everything alike nor depend on chance, and popularity counts tie often. A non-finite score (NaN,
    +-inf) ranks below every finite one, and a target with a non-finite score ranks last: every comparison with
    NaN is false, so a plain ``>`` would put the target of a NaN model first.
    """
    scores = scores.float()
    finite = torch.isfinite(scores)
    target_score = scores.gather(1, targets[:, None])
    target_finite = finite.gather(1, targets[:, None])
    ids = torch.arange(scores.shape[1], device=scores.device)
    is_target = ids[None, :] == targets[:, None]
    beats = (scores > target_score) | ((scores == target_score) & (ids[None, :] < targets[:, None]))
    above = torch.where(target_finite, finite & beats, ~is_target)
    if exclude is not None:
        above &= ~exclude
    return above.sum(dim=1)


def non_finite_rows(scores: torch.Tensor, exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[B]`` bool: rows of ``scores [B, M]`` with a NaN or infinite score among the candidates not excluded."""
    bad = ~torch.isfinite(scores)
    if exclude is not None:
        bad &= ~exclude
    return bad.any(dim=1)


def hit_rate(ranks: torch.Tensor, k: int) -> float:
    """HR@k: the share of targets ranked in the top k."""
    return (ranks < k).double().mean().item() if ranks.numel() else 0.0


def ndcg(ranks: torch.Tensor, k: int) -> float:
    """NDCG@k for a single relevant item: ``1 / log2(rank + 2)`` when ``rank < k``, else 0, averaged."""
    if not ranks.numel():
        return 0.0
    gain = 1.0 / torch.log2(ranks.double() + 2.0)
    return torch.where(ranks < k, gain, torch.zeros_like(gain)).mean().item()


def mrr(ranks: torch.Tensor) -> float:
    """Mean reciprocal rank over the full ranking."""
    return (1.0 / (ranks.double() + 1.0)).mean().item() if ranks.numel() else 0.0


def ranking_metrics(ranks: torch.Tensor, ks: Iterable[int] = (10, 50, 200)) -> Dict[str, float]:
    """``{"HR@k": ..., "NDCG@k": ..., "MRR": ...}`` for every k."""
    out = {}
    for k in ks:
        out[f"HR@{k}"] = hit_rate(ranks, k)
    for k in ks:
        out[f"NDCG@{k}"] = ndcg(ranks, k)
    out["MRR"] = mrr(ranks)
    return out


def ranking_sums(ranks: torch.Tensor, ks: Iterable[int] = (10, 50, 200)) -> Dict[str, torch.Tensor]:
    """What ``ranking_metrics`` averages, as float64 sums over ``ranks [N]`` (CPU scalars): summed across
    data-parallel ranks and divided by the total count, they give the metrics of all users."""
    r = ranks.double().cpu()
    gain = 1.0 / torch.log2(r + 2.0)
    out = {f"HR@{k}": (r < k).double().sum() for k in ks}
    out.update({f"NDCG@{k}": torch.where(r < k, gain, torch.zeros_like(gain)).sum() for k in ks})
    out["MRR"] = (1.0 / (r + 1.0)).sum()
    return out
