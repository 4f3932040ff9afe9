"""Ranking metrics on hand-computed cases."""

import math

import pytest
import torch

from test_train import write_synthetic_ml1m

from hstu.evaluate import rank_targets
from hstu.metrics import hit_rate, mrr, ndcg, non_finite_rows, ranking_metrics, target_ranks
from hstu.train import load_sequences


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


def test_non_finite_scores_rank_last():
    nan, inf = float("nan"), float("inf")
    # a NaN model: every score NaN, so every comparison is false; the target must not come out first
    scores = torch.full((2, 6), nan)
    exclude = torch.zeros(2, 6, dtype=torch.bool)
    exclude[:, 0] = True
    assert target_ranks(scores, torch.tensor([3, 5]), exclude).tolist() == [4, 4]
    # a non-finite target ranks below every candidate, finite or not; a non-finite candidate below the target
    scores = torch.tensor([[0.0, 0.9, nan, 0.7, -inf], [0.0, nan, 0.2, inf, 0.4]])
    assert target_ranks(scores, torch.tensor([2, 4])).tolist() == [4, 0]
    assert target_ranks(scores, torch.tensor([3, 3])).tolist() == [1, 4]
    assert non_finite_rows(scores).tolist() == [True, True]
    assert non_finite_rows(scores, torch.tensor([[0, 0, 1, 0, 1], [0, 1, 0, 1, 0]], dtype=torch.bool)).tolist() == [
        False, False]


def test_rank_targets_counts_non_finite_users_and_checks_batch_size(tmp_path):
    _, seqs = load_sequences(write_synthetic_ml1m(tmp_path, users=6, items=30, length=5), "ml-1m")

    def nan_model(batch):
        return torch.full((len(batch.users), seqs.num_items + 1), float("nan")), None

    out = rank_targets(seqs, nan_model, max_seq_len=8)
    assert out["HR@10"] == 0.0 and out["NDCG@10"] == 0.0 and out["non_finite_users"] == out["users"] == 6
    with pytest.raises(ValueError, match="batch_size: must be an integer >= 1, got -5"):
        rank_targets(seqs, nan_model, batch_size=-5)
