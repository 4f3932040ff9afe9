"""Our leave-one-out split written to plain CSV files, so that another library (in another environment) fits on
exactly the data and targets our training and evaluation use.

Files in the split folder, one row per event, ``user`` the raw user id, ``item`` our dense item id (1..num_items),
``timestamp`` in seconds and ``order`` the event's local index in its user's time-sorted sequence:

- ``train.csv``: each user's events before the test target, the validation target included: what our model sees
  as the history of the test target. The other side holds out each user's last row of it (the validation target)
  for early stopping, so it trains on what our training trains on.
- ``valid.csv`` / ``test.csv``: each user's validation (n-2) and test (n-1) target.

MovieLens has many equal timestamps; ``order`` keeps our stable file-order tie-break, so that "last by time" means
the same event on both sides.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from hstu.data.sequences import target_indices

COLUMNS = ["user", "item", "timestamp", "order"]


def _events(seqs, users, local):
    """The frame of the events ``local[i]`` of user index ``users[i]``."""
    flat = seqs.offsets[users] + local
    return pd.DataFrame({"user": seqs.user_ids[users], "item": seqs.items[flat], "timestamp": seqs.timestamps[flat],
                         "order": local})


def split_frames(seqs):
    """``{"train", "valid", "test"}`` frames of a leave-one-out-ready ``UserSequences`` (see the module doc)."""
    test = target_indices(seqs, "test")
    users = np.repeat(np.arange(len(seqs)), test)
    local = np.arange(test.sum()) - np.repeat(np.cumsum(test) - test, test)
    every = np.arange(len(seqs))
    return {"train": _events(seqs, users, local), "valid": _events(seqs, every, target_indices(seqs, "valid")),
            "test": _events(seqs, every, target_indices(seqs, "test"))}


def export_split(seqs, out_dir, dataset=None):
    """Write the split files and ``split.json`` (counts, and the catalogue size the top-K lists are taken from)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = split_frames(seqs)
    for name in ("train", "valid", "test"):
        frames[name].to_csv(out_dir / f"{name}.csv", index=False, columns=COLUMNS)
    meta = {"dataset": dataset, "users": len(seqs), "num_items": int(seqs.num_items),
            "train_events": len(frames["train"])}
    (out_dir / "split.json").write_text(json.dumps(meta, indent=1))
    return meta


def read_split(split_dir):
    """``{"train", "valid", "test"}`` frames as written by ``export_split``."""
    return {name: pd.read_csv(Path(split_dir) / f"{name}.csv") for name in ("train", "valid", "test")}
