"""Evaluation on the scores' device gives the numbers of the dense host-mask evaluation it replaced, and the
metrics reduced from sums give the averaged ones."""

import numpy as np
import pytest
import torch
from test_train import write_synthetic_ml1m

from hstu.config import ModelConfig
from hstu.data.batching import eval_batch
from hstu.data.sequences import seen_mask
from hstu.evaluate import evaluate_model, seen_mask_on
from hstu.metrics import ranking_metrics, ranking_sums, target_ranks
from hstu.model import HSTURecommender
from hstu.train import load_sequences


@pytest.fixture(scope="module")
def seqs(tmp_path_factory):
    return load_sequences(write_synthetic_ml1m(tmp_path_factory.mktemp("ev") / "d", users=20, length=10), "ml-1m")[1]


def test_device_seen_mask_equals_the_host_one(seqs):
    users = np.array([3, 0, 7, 19])
    ends = seqs.lengths()[users] - 1
    dense = seen_mask(seqs, users, ends)
    assert torch.equal(seen_mask_on(seqs, users, ends, seqs.num_items + 1, "cpu"), torch.from_numpy(dense))


def dense_host_metrics(model, seqs, split, batch_size):
    """The evaluation as it was: a dense numpy seen mask per batch, ranks counted against it."""
    ranks = []
    with torch.no_grad():
        for start in range(0, len(seqs), batch_size):
            users = np.arange(start, min(start + batch_size, len(seqs)))
            batch = eval_batch(seqs, users, model.config.max_seq_len, split)
            out = model(batch)
            scores = model.retrieval_logits(out[batch.last_history_rows()]).float()
            targets = batch.items[batch.target_rows()]
            exclude = torch.from_numpy(seen_mask(seqs, batch.users, batch.target_index))
            exclude[:, 0] = True
            exclude[torch.arange(len(targets)), targets] = False
            ranks.append(target_ranks(scores, targets, exclude))
    return ranking_metrics(torch.cat(ranks))


@pytest.mark.parametrize("split", ["valid", "test"])
def test_device_evaluation_gives_the_dense_host_numbers(seqs, split):
    torch.manual_seed(0)
    model = HSTURecommender(ModelConfig(num_items=seqs.num_items, dim=16, num_layers=1, max_seq_len=8)).eval()
    got = evaluate_model(model, seqs, split, batch_size=6)
    want = dense_host_metrics(model, seqs, split, batch_size=7)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_summed_metrics_equal_the_averaged_ones():
    ranks = torch.tensor([0, 3, 9, 10, 250, 1])
    sums = ranking_sums(ranks)
    for key, value in ranking_metrics(ranks).items():
        assert sums[key].item() / len(ranks) == pytest.approx(value, abs=1e-12)
