"""Ranking metrics on hand-computed cases."""

import math

import pytest
import torch

from hstu.metrics import hit_rate, mrr, ndcg, ranking_metrics, target_ranks


def test_target_ranks_counts_better_items_and_breaks_ties_by_id():
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.7, 0.5], [0.0, 0.1, 0.2, 0.3, 0.4]])
    # user 0's target is item 2 (0.5): items 1 (0.9) and 3 (0.7) beat it; item 4 ties but has a larger id
    # user 1's target is item 4, the best score
    assert target_ranks(scores, torch.tensor([2, 4])).tolist() == [2, 0]
    # item 2 ties item 4 from below: the tie goes against the target
    assert target_ranks(scores, torch.tensor([4, 1])).tolist() == [3, 3]


def test_target_ranks_excludes_items():
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.7]])
    exclude = torch.tensor([[True, True, False, False]])
    assert target_ranks(scores, torch.tensor([2]), exclude).tolist() == [1]


def test_hand_computed_metrics():
    ranks = torch.tensor([0, 1, 9, 10, 60])
    assert hit_rate(ranks, 10) == pytest.approx(3 / 5)
    assert hit_rate(ranks, 1) == pytest.approx(1 / 5)
    assert ndcg(ranks, 10) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5)
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 61) / 5)
    m = ranking_metrics(ranks, ks=(10, 50))
    assert list(m) == ["HR@10", "HR@50", "NDCG@10", "NDCG@50", "MRR"]
    assert m["HR@50"] == pytest.approx(4 / 5)


def test_metrics_of_no_users_are_zero():
    empty = torch.zeros(0, dtype=torch.long)
    assert hit_rate(empty, 10) == 0.0 and ndcg(empty, 10) == 0.0 and mrr(empty) == 0.0
