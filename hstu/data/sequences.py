"""Per-user event sequences in flat (CSR-like) arrays, and the leave-one-out split.

All event indices taken or returned by the split helpers are *local* to each user (0..n-1, as in
`hstu.data.batching`): user u's event i is the flat event `seqs.offsets[u] + i`.

Leave-one-out, for a user with n >= 3 events: test target n-1, validation target n-2, train events
[0, n-2). Every history is capped at the most recent `max_seq_len - 1` events, leaving one slot of a
`max_seq_len` model input for the target. The history before the validation target is the capped train
window itself; the history before the test target also holds the validation target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hstu.actions import actions_from_ratings

MIN_EVENTS = 3  # one train event at least, plus the validation and test targets
DEFAULT_MAX_SEQ_LEN = 200


@dataclass
class UserSequences:
    """Users' events sorted by time. U users, E events in all.

    user_ids: int64 [U], raw user ids, ascending. offsets: int64 [U+1], user u's events are
    [offsets[u], offsets[u+1]). items: int64 [E], dense ids 1..num_items (0 is padding, never stored).
    ratings, timestamps: int64 [E].
    """

    user_ids: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    num_items: int

    def __post_init__(self):
        e = len(self.items)
        if len(self.offsets) != len(self.user_ids) + 1 or self.offsets[0] != 0 or self.offsets[-1] != e:
            raise ValueError(f"offsets must have {len(self.user_ids) + 1} entries from 0 to {e}")
        if len(self.ratings) != e or len(self.timestamps) != e:
            raise ValueError("items, ratings and timestamps must have the same length")

    def __len__(self) -> int:
        return len(self.user_ids)

    def lengths(self) -> np.ndarray:
        """int64 [U]: number of events of each user."""
        return np.diff(self.offsets)

    def actions(self) -> np.ndarray:
        """int64 [E]: action id of each event (see hstu.actions)."""
        return actions_from_ratings(self.ratings)

    @classmethod
    def from_ratings(cls, df: pd.DataFrame) -> tuple[UserSequences, np.ndarray]:
        """Build sequences from a ratings frame (int columns user, item, rating, timestamp; file order).

        Returns (sequences, item_ids): item_ids int64 [num_items] is the sorted distinct raw item ids,
        and dense id d stands for item_ids[d-1].
        """
        user = df["user"].to_numpy(np.int64)
        ts = df["timestamp"].to_numpy(np.int64)
        item_ids, dense = np.unique(df["item"].to_numpy(np.int64), return_inverse=True)
        # Two stable passes, so that events with equal timestamps (frequent in MovieLens) keep file order.
        order = np.argsort(ts, kind="stable")
        order = order[np.argsort(user[order], kind="stable")]
        user_ids, counts = np.unique(user[order], return_counts=True)
        seqs = cls(
            user_ids=user_ids.astype(np.int64),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            items=(dense[order] + 1).astype(np.int64),
            ratings=df["rating"].to_numpy(np.int64)[order],
            timestamps=ts[order],
            num_items=len(item_ids),
        )
        return seqs, item_ids.astype(np.int64)


def leave_one_out(seqs: UserSequences, min_events: int = MIN_EVENTS) -> UserSequences:
    """The users with at least `min_events` events (num_items unchanged, item ids not renumbered)."""
    lengths = seqs.lengths()
    keep = lengths >= min_events
    events = np.repeat(keep, lengths)
    return UserSequences(
        user_ids=seqs.user_ids[keep],
        offsets=np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64),
        items=seqs.items[events],
        ratings=seqs.ratings[events],
        timestamps=seqs.timestamps[events],
        num_items=seqs.num_items,
    )


def history_window(end, max_seq_len: int = DEFAULT_MAX_SEQ_LEN):
    """(start, end): the history before the event at local index `end` is the events [start, end), capped
    at the most recent max_seq_len-1, i.e. start = max(0, end - (max_seq_len - 1)). Scalars or int arrays."""
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len must be >= 2, got {max_seq_len}")
    end = np.asarray(end, dtype=np.int64)
    return np.maximum(0, end - (max_seq_len - 1)), end


def _check_split(seqs: UserSequences) -> None:
    if len(seqs) and seqs.lengths().min() < MIN_EVENTS:
        raise ValueError(f"some users have fewer than {MIN_EVENTS} events: call leave_one_out first")


def target_indices(seqs: UserSequences, split: str) -> np.ndarray:
    """int64 [U]: local index of each user's "valid" (n-2) or "test" (n-1) target event."""
    _check_split(seqs)
    back = {"valid": 2, "test": 1}
    if split not in back:
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    return seqs.lengths() - back[split]


def train_windows(seqs: UserSequences, max_seq_len: int = DEFAULT_MAX_SEQ_LEN):
    """(start, end), int64 [U] each, local: the most recent max_seq_len-1 train events of each user."""
    return history_window(target_indices(seqs, "valid"), max_seq_len)


def eval_windows(seqs: UserSequences, split: str, max_seq_len: int = DEFAULT_MAX_SEQ_LEN):
    """(start, end, target), int64 [U] each, local: the capped history [start, end) before each user's
    `split` ("valid" or "test") target, and the target's index (== end)."""
    target = target_indices(seqs, split)
    start, end = history_window(target, max_seq_len)
    return start, end, target


def train_mask(seqs: UserSequences) -> np.ndarray:
    """bool [E]: whether each flat event is in its user's train part (all of it, uncapped)."""
    _check_split(seqs)
    return np.arange(len(seqs.items)) < np.repeat(seqs.offsets[1:] - 2, seqs.lengths())


def train_item_counts(seqs: UserSequences) -> np.ndarray:
    """int64 [num_items+1]: occurrences of each dense item id in the train parts (index 0 is padding: 0)."""
    counts = np.bincount(seqs.items[train_mask(seqs)], minlength=seqs.num_items + 1)
    return counts.astype(np.int64)


def seen_items(seqs: UserSequences, u: int, end: int) -> np.ndarray:
    """int64: the distinct items of user u's events [0, end) (local, uncapped), sorted."""
    return np.unique(seqs.items[seqs.offsets[u] : seqs.offsets[u] + end])


def seen_mask(seqs: UserSequences, users: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """bool [len(users), num_items+1]: row i marks the items of user users[i]'s events [0, ends[i]) (local,
    uncapped); column 0 (padding) is False. For masking already-seen items out of eval scores."""
    users = np.asarray(users, dtype=np.int64)
    counts = np.asarray(ends, dtype=np.int64)
    if ((counts < 0) | (counts > seqs.lengths()[users])).any():
        raise ValueError("ends must lie in 0..n for each user")
    # Flat indices of all the events, user after user, in one go.
    first = np.cumsum(counts) - counts
    idx = np.arange(counts.sum()) - np.repeat(first - seqs.offsets[users], counts)
    mask = np.zeros((len(users), seqs.num_items + 1), dtype=bool)
    mask[np.repeat(np.arange(len(users)), counts), seqs.items[idx]] = True
    return mask
