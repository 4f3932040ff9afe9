"""Turning user sequences into model batches, jagged (values + ``seq_offsets``) or padded ``(B, T)``.

A batch row is a *segment* of one user's events: history events ``[hist_start, hist_end)`` with their real
actions, followed by target events ``[hist_end, target_end)`` whose action is UNKNOWN (their outcome is what the
model predicts). History tokens can carry a next-item label for the retrieval loss.
"""

from dataclasses import dataclass, fields
from typing import Optional

import numpy as np
import torch

from ..actions import UNKNOWN, actions_from_ratings
from ..jagged import jagged_to_padded
from .sequences import history_window


@dataclass
class JaggedBatch:
    """``items, actions, timestamps, ratings, next_items: [L]`` int64; ``seq_offsets [B+1]``; ``num_targets [B]``.

    ``ratings`` holds the rating labels of target tokens (0 on history tokens); ``next_items`` the next item
    after each history token when the segment asked for retrieval labels (0: no label). ``next_timestamps [L]``:
    the time of each history token's next event in the user's sequence (the event it predicts; for the last
    history token, the first target's), a target token's own time, and a token's own time where no event follows:
    the query side of the time bias under ``ModelConfig.time_query = "next"``. ``users [B]`` (numpy)
    indexes the ``UserSequences`` the batch came from; ``target_index [B]`` is the first target's event index.
    """

    items: torch.Tensor
    actions: torch.Tensor
    timestamps: torch.Tensor
    ratings: torch.Tensor
    next_items: torch.Tensor
    seq_offsets: torch.Tensor
    num_targets: torch.Tensor
    next_timestamps: torch.Tensor
    users: np.ndarray
    target_index: np.ndarray
    max_len: int

    def to(self, device) -> "JaggedBatch":
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=True)
            if isinstance(getattr(self, f.name), torch.Tensor) else getattr(self, f.name)
            for f in fields(self)
        }
        return JaggedBatch(**moved)

    @property
    def lengths(self) -> torch.Tensor:
        return self.seq_offsets[1:] - self.seq_offsets[:-1]

    def target_rows(self) -> torch.Tensor:
        """``[B]`` index of each segment's first target token (or of its end when it has none)."""
        return self.seq_offsets[1:] - self.num_targets

    def last_history_rows(self) -> torch.Tensor:
        """``[B]`` index of each segment's last history token (its user vector for the next item)."""
        return self.target_rows() - 1

    def to_padded(self) -> dict:
        """The same batch as ``[B, T]`` tensors (``T = max_len``, padded with 0) plus ``lengths [B]``."""
        out = {"lengths": self.lengths, "num_targets": self.num_targets}
        for name in ("items", "actions", "timestamps", "ratings", "next_items", "next_timestamps"):
            out[name] = jagged_to_padded(getattr(self, name), self.seq_offsets, self.max_len)[0]
        return out


def make_batch(
    seqs,
    users: np.ndarray,
    hist_start: np.ndarray,
    hist_end: np.ndarray,
    target_end: Optional[np.ndarray] = None,
    next_labels: bool = False,
) -> JaggedBatch:
    """Build a ``JaggedBatch`` from segments; every argument is ``[B]`` (event indices local to each user).

    Args:
        seqs: a ``UserSequences`` (``offsets``, ``items``, ``ratings``, ``timestamps``).
        users: user indices into ``seqs``.
        hist_start, hist_end: each segment's history events ``[hist_start, hist_end)``.
        target_end: each segment's targets are events ``[hist_end, target_end)`` (None: no targets).
        next_labels: label history tokens with the next history item (the last history token gets none, so no
            label reaches past ``hist_end``).
    """
    users = np.asarray(users, dtype=np.int64)
    hist_start, hist_end = np.asarray(hist_start, np.int64), np.asarray(hist_end, np.int64)
    target_end = hist_end if target_end is None else np.asarray(target_end, np.int64)
    base = seqs.offsets[users]
    seg_len = target_end - hist_start
    num_targets = target_end - hist_end
    offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(seg_len, out=offsets[1:])
    # global event index of every token, segment after segment
    local = np.arange(offsets[-1]) - np.repeat(offsets[:-1], seg_len)
    idx = np.repeat(base + hist_start, seg_len) + local
    is_target = local >= np.repeat(hist_end - hist_start, seg_len)
    actions = actions_from_ratings(seqs.ratings[idx])
    actions[is_target] = UNKNOWN
    ratings = np.where(is_target, seqs.ratings[idx], 0)
    next_items = np.zeros_like(idx)
    if next_labels:
        has_next = ~is_target & (local + 1 < np.repeat(hist_end - hist_start, seg_len))
        next_items[has_next] = seqs.items[idx[has_next] + 1]
    follows = ~is_target & (idx + 1 < np.repeat(seqs.offsets[users + 1], seg_len))
    next_ts = seqs.timestamps[np.where(follows, idx + 1, idx)]
    t = torch.from_numpy
    return JaggedBatch(
        items=t(seqs.items[idx]), actions=t(actions), timestamps=t(seqs.timestamps[idx]), ratings=t(ratings),
        next_items=t(next_items), seq_offsets=t(offsets), num_targets=t(num_targets),
        next_timestamps=t(next_ts), users=users,
        target_index=hist_end, max_len=int(seg_len.max()) if len(seg_len) else 0,
    )


def concat_batches(a: JaggedBatch, b: JaggedBatch) -> JaggedBatch:
    """One jagged batch holding ``a``'s segments then ``b``'s (e.g. the retrieval and the rating pass)."""
    return JaggedBatch(
        **{n: torch.cat([getattr(a, n), getattr(b, n)])
           for n in ("items", "actions", "timestamps", "ratings", "next_items", "next_timestamps")},
        seq_offsets=torch.cat([a.seq_offsets, b.seq_offsets[1:] + a.seq_offsets[-1]]),
        num_targets=torch.cat([a.num_targets, b.num_targets]),
        users=np.concatenate([a.users, b.users]),
        target_index=np.concatenate([a.target_index, b.target_index]),
        max_len=max(a.max_len, b.max_len),
    )


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, window: int = 32):
    """Shuffled batches of user indices in which users of similar length travel together.

    Users are shuffled, cut into windows of ``window`` batches, sorted by length inside each window, split into
    batches, and the batches are shuffled: each batch pads to a length close to its members', which cuts the
    padded attention's ``B * T^2`` work roughly in half on MovieLens, while batches stay random across epochs.
    """
    order = rng.permutation(len(lengths))
    span = batch_size * window
    for start in range(0, len(order), span):
        chunk = order[start:start + span]
        order[start:start + span] = chunk[np.argsort(lengths[chunk], kind="stable")]
    batches = [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def training_batch(seqs, users: np.ndarray, max_seq_len: int, num_targets: int, rng: np.random.Generator,
                   part: slice = slice(None)) -> JaggedBatch:
    """The training batch of ``users`` (indices into a leave-one-out ``UserSequences``): two segments each.

    Retrieval segment: the user's train events (all but the last two), capped at the most recent
    ``max_seq_len - 1``, every token labelled with the next item. Rating segment: the train events cut at a
    random point ``c`` (drawn anew each call, so over epochs every event serves as a target): history
    ``[c - (max_seq_len - 1), c)`` followed by up to ``num_targets`` target events ``[c, c + num_targets)``.

    ``part`` keeps only those users (a data-parallel rank's shard): the cuts are still drawn for all of them, so
    every rank draws alike and a user's cut does not depend on how the batch was split.
    """
    users = np.asarray(users, dtype=np.int64)
    n = seqs.lengths()[users] - 2
    # c uniform in [1, n - 1] (at least one history event), or 0 when there is a single train event
    cut = np.where(n > 1, rng.integers(1, np.maximum(n, 2)), 0)
    users, n, cut = users[part], n[part], cut[part]
    retrieval = make_batch(seqs, users, *history_window(n, max_seq_len), next_labels=True)
    rating = make_batch(seqs, users, *history_window(cut, max_seq_len), np.minimum(cut + num_targets, n))
    return concat_batches(retrieval, rating)


def eval_batch(seqs, users: np.ndarray, max_seq_len: int, split: str) -> JaggedBatch:
    """Each user's history before the ``split`` target ("valid": second-to-last event, "test": last),
    capped at ``max_seq_len - 1`` events, followed by that target as the single target token."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    users = np.asarray(users, dtype=np.int64)
    target = seqs.lengths()[users] - (2 if split == "valid" else 1)
    return make_batch(seqs, users, *history_window(target, max_seq_len), target + 1)
