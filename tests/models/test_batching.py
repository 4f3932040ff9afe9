"""Batches built from user sequences: segments, targets, labels, jagged and padded layouts."""

import numpy as np
import torch

from hstu.actions import NEGATIVE, NEUTRAL, POSITIVE, UNKNOWN
from hstu.data.batching import eval_batch, make_batch, training_batch
from hstu.data.sequences import UserSequences


def seqs_of(lengths):
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    E = int(offsets[-1])
    return UserSequences(
        user_ids=np.arange(1, len(lengths) + 1, dtype=np.int64), offsets=offsets,
        items=np.arange(1, E + 1, dtype=np.int64), ratings=(np.arange(E) % 5 + 1).astype(np.int64),
        timestamps=np.arange(E, dtype=np.int64) * 10, num_items=E,
    )


def test_make_batch_segments_targets_and_labels():
    s = seqs_of([6, 4])
    b = make_batch(s, np.array([0, 1]), np.array([1, 0]), np.array([4, 2]), np.array([6, 3]), next_labels=True)
    assert b.seq_offsets.tolist() == [0, 5, 8]
    assert b.num_targets.tolist() == [2, 1]
    assert b.items.tolist() == [2, 3, 4, 5, 6, 7, 8, 9]
    # ratings 2,3,4 -> negative, neutral, positive; targets are UNKNOWN
    assert b.actions.tolist() == [NEGATIVE, NEUTRAL, POSITIVE, UNKNOWN, UNKNOWN, NEGATIVE, NEUTRAL, UNKNOWN]
    assert b.ratings.tolist() == [0, 0, 0, 5, 1, 0, 0, 4]
    # next-item labels stop at each history's end: none reaches a target
    assert b.next_items.tolist() == [3, 4, 0, 0, 0, 8, 0, 0]
    assert b.target_rows().tolist() == [3, 7] and b.last_history_rows().tolist() == [2, 6]
    p = b.to_padded()
    assert p["items"].shape == (2, 5) and p["items"][1].tolist() == [7, 8, 9, 0, 0]
    assert p["lengths"].tolist() == [5, 3]


def test_training_batch_never_sees_validation_or_test_events():
    s = seqs_of([12, 3, 30])
    rng = np.random.default_rng(0)
    for _ in range(20):
        b = training_batch(s, np.array([0, 1, 2]), max_seq_len=8, num_targets=4, rng=rng)
        assert b.seq_offsets.shape[0] == 7  # a retrieval and a rating segment per user
        limit = {0: 10, 1: 1, 2: 28}  # first held-out event (validation target) per user, as a global item id
        starts = s.offsets[[0, 1, 2]]
        for seg in range(6):
            user = seg % 3
            items = b.items[b.seq_offsets[seg]:b.seq_offsets[seg + 1]]
            assert (items - 1 - starts[user] < limit[user]).all()
            assert len(items) - int(b.num_targets[seg]) <= 7  # history capped at max_seq_len - 1
        assert b.num_targets[:3].tolist() == [0, 0, 0]
        assert (b.num_targets[3:] <= 4).all()


def test_eval_batch_puts_the_target_after_the_capped_history():
    s = seqs_of([12, 3])
    b = eval_batch(s, np.array([0, 1]), max_seq_len=5, split="test")
    assert b.items.tolist() == [8, 9, 10, 11, 12, 13, 14, 15]
    assert b.num_targets.tolist() == [1, 1]
    v = eval_batch(s, np.array([0, 1]), max_seq_len=5, split="valid")
    assert v.items[v.target_rows()].tolist() == [11, 14]
    assert torch.equal(v.target_rows(), torch.tensor([4, 6]))


def test_length_bucketed_batches_cover_every_user_once_and_group_lengths():
    from hstu.data.batching import length_bucketed_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 200, size=1000)
    batches = length_bucketed_batches(lengths, 16, rng, window=8)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    assert sorted(len(b) for b in batches) == [8] + [16] * 62  # 1000 = 7 windows of 128 + 6 * 16 + 8
    # batches pad to far less than random batches would
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_padded = sum(16 * lengths[rng.permutation(1000)[:16]].max() for _ in range(len(batches)))
    assert padded < 0.8 * random_padded
