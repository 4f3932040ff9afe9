"""Fit rectools' HSTU and SASRec on a split written by bench/rectools_split.py and write each model's top-K lists.

Runs in the rectools environment only (see bench/requirements-rectools.txt), never imports hstu: it reads the
split's CSV files and writes, per model, ``topk_<model>.npz`` (``users``: raw ids in test.csv's order, ``items``:
int64 [users, K] dense ids, -1 past the end of a shorter list) and ``fit_<model>.json`` (fit seconds, epochs).

Settings follow rectools' HSTU tutorial: d = 50, 2 blocks, 1 head, session length 200, sampled softmax over 128
negatives with logits / 0.05, lr 1e-3, batch 128, validation on each user's last train event (our validation
target), early stopping on validation recall@10 with patience 5, the best epoch's weights kept; HSTU recommends
with the test target's timestamp as context (time-aware inference). "hstu-large" is 8 blocks and 2 heads.

A fit can take hours on a small CPU, so each epoch leaves Lightning checkpoints in ``--ckpt-dir`` (default
``OUT/ckpt``): ``<model>.ckpt`` (best so far) and ``<model>-last.ckpt``, and appends its validation recall to
``OUT/progress_<model>.jsonl``. ``--resume`` continues an interrupted fit from ``<model>-last.ckpt`` (optimizer,
epoch, early-stopping and best-checkpoint state included; the batches' shuffling after the restart differs from
an uninterrupted run's). A model whose ``fit_<model>.json`` exists is skipped under ``--resume``.

    .venv-rectools/bin/python bench/rectools_fit.py --split-dir DIR --out-dir DIR [--models hstu,sasrec] [--resume]
"""

import argparse
import json
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pytorch_lightning import Callback, Trainer, seed_everything
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from rectools import Columns
from rectools.dataset import Dataset
from rectools.models import HSTUModel, SASRecModel
from rectools.models.nn.transformers.utils import leave_one_out_mask

MODELS = {
    "hstu": (HSTUModel, dict(n_blocks=2, n_heads=1)),
    "hstu-large": (HSTUModel, dict(n_blocks=8, n_heads=2)),
    "sasrec": (SASRecModel, dict(n_blocks=2, n_heads=1)),
}
COMMON = dict(n_factors=50, session_max_len=200, loss="sampled_softmax", n_negatives=128, lr=1e-3, batch_size=128,
              lightning_module_kwargs={"logits_t": 0.05}, get_val_mask_func=leave_one_out_mask)
MONITOR = "val_recall@10"


class ValidRecall(Callback):
    """Full-catalogue recall@10 of each validation target, the user's seen items (its input) filtered out:
    rectools' own validation logs only the sampled loss."""

    def on_validation_epoch_start(self, trainer, pl_module):
        self.hits, self.count = 0, 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        with torch.no_grad():
            logits = pl_module.torch_model(batch)[:, -1, :]
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, batch["x"], True)
        seen[:, 0] = True
        target = batch["y"][:, :1]
        seen.scatter_(1, target, False)
        logits = logits.masked_fill(seen, float("-inf"))
        top = logits.topk(10, dim=1).indices
        self.hits += int((top == target).any(dim=1).sum())
        self.count += len(target)

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log(MONITOR, self.hits / max(1, self.count), prog_bar=False)


class Progress(Callback):
    """One JSON line per finished epoch (validation recall@10, fit seconds so far, summed over resumed runs), so a
    long fit can be watched and its time survives a restart."""

    def __init__(self, path, elapsed_before):
        self.path, self.before, self.start = Path(path), elapsed_before, time.time()

    def elapsed(self):
        return self.before + time.time() - self.start

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        score = trainer.callback_metrics.get(MONITOR)
        line = {"epoch": int(trainer.current_epoch) + 1, MONITOR: None if score is None else float(score),
                "fit_s": round(self.elapsed(), 1)}
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)


def previous_fit_seconds(path):
    """Fit seconds logged by earlier runs of a resumed fit (0 for a fresh one)."""
    if not path.is_file():
        return 0.0
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return float(lines[-1]["fit_s"]) if lines else 0.0


def read_frames(split_dir):
    """rectools interaction frames; equal timestamps are ordered by our ``order`` column (microseconds, which
    rectools' relative-time buckets, taken in whole seconds, never see)."""
    frames = {}
    for name in ("train", "test"):
        df = pd.read_csv(Path(split_dir) / f"{name}.csv")
        frames[name] = pd.DataFrame({
            Columns.User: df["user"], Columns.Item: df["item"], Columns.Weight: 1.0,
            Columns.Datetime: pd.to_datetime(df["timestamp"], unit="s") + pd.to_timedelta(df["order"], unit="us"),
        })
    return frames


def fit_one(name, frames, k, max_epochs, patience, seed, ckpt_dir, progress_path, resume):
    cls, extra = MODELS[name]
    seed_everything(seed, workers=True)
    model = cls(**COMMON, **extra, deterministic=True, recommend_torch_device="cpu")
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename=name, monitor=MONITOR, mode="max", save_top_k=1,
                                 save_last=True)
    checkpoint.CHECKPOINT_NAME_LAST = f"{name}-last"
    last = Path(ckpt_dir) / f"{name}-last.ckpt"
    resume_from = str(last) if resume and last.is_file() else None
    if resume_from is None:
        progress_path.unlink(missing_ok=True)
        for stale in Path(ckpt_dir).glob(f"{name}*.ckpt"):
            stale.unlink()
    progress = Progress(progress_path, previous_fit_seconds(progress_path) if resume_from else 0.0)
    stopper = EarlyStopping(monitor=MONITOR, mode="max", patience=patience)
    # the trainer is set after init: rectools' get_trainer_func takes only JSON-serialisable kwargs
    model._trainer = Trainer(max_epochs=max_epochs, deterministic=True, enable_progress_bar=False,
                             enable_model_summary=False, logger=False, devices=1, accelerator="cpu",
                             callbacks=[ValidRecall(), progress, stopper, checkpoint])
    dataset = Dataset.construct(frames["train"])
    if resume_from:
        print(f"{name}: resuming from {resume_from}", flush=True)
    # rectools' fit() is _fit() + is_fitted; _fit's three steps are spelled out to pass Lightning's ckpt_path
    model._build_model_from_dataset(dataset)
    model.fit_trainer = deepcopy(model._trainer)
    model.fit_trainer.fit(model.lightning_model, model.data_preparator.get_dataloader_train(),
                          model.data_preparator.get_dataloader_val(), ckpt_path=resume_from)
    model.is_fitted = True
    fit_s = progress.elapsed()
    trainer = model.fit_trainer
    best_path = trainer.checkpoint_callback.best_model_path
    model.load_weights_from_checkpoint(best_path)
    users = frames["test"][Columns.User].to_numpy()
    context = None
    if cls is HSTUModel:
        context = frames["test"].drop(columns=[Columns.Item])
    reco = model.recommend(users=users, dataset=dataset, k=k, filter_viewed=True, context=context)
    items = np.full((len(users), k), -1, dtype=np.int64)
    row = pd.Series(np.arange(len(users)), index=users)
    items[row[reco[Columns.User]].to_numpy(), reco[Columns.Rank].to_numpy() - 1] = reco[Columns.Item].to_numpy()
    best = trainer.checkpoint_callback.best_model_score
    info = {"model": name, "fit_s": round(fit_s, 1), "epochs": int(trainer.current_epoch),
            "best_valid_recall@10": None if best is None else float(best), "resumed": resume_from is not None,
            "settings": {**{k_: v for k_, v in COMMON.items() if k_ != "get_val_mask_func"}, **extra,
                         "validation": "leave_one_out_mask", "max_epochs": max_epochs, "patience": patience,
                         "seed": seed, "time_aware_inference": cls is HSTUModel}}
    return users, items, info


def epochs_per_model(text, names):
    """``--max-epochs``: one number for every model, or ``name=N`` pairs (comma-separated) with an optional plain
    number for the rest, e.g. ``15,hstu-large=4``."""
    caps, default = {}, None
    for part in filter(None, text.split(",")):
        name, _, value = part.rpartition("=")
        if name:
            caps[name] = int(value)
        else:
            default = int(value)
    unknown = sorted(set(caps) - set(MODELS))
    if unknown:
        raise ValueError(f"--max-epochs names unknown model(s) {', '.join(unknown)}")
    out = {n: caps.get(n, default if default is not None else 100) for n in names}
    if any(v < 1 for v in out.values()):
        raise ValueError("--max-epochs must be >= 1")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split-dir", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--models", default="hstu,sasrec,hstu-large", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--max-epochs", default="100",
                   help="cap on the epochs, N or name=N pairs such as 15,hstu-large=4 (early stopping may end first)")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-dir", help="Lightning checkpoints, kept for --resume (default OUT/ckpt)")
    p.add_argument("--resume", action="store_true",
                   help="continue each model's interrupted fit from CKPT/<model>-last.ckpt; skip finished models")
    args = p.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}: expected {', '.join(MODELS)}")
    try:
        max_epochs = epochs_per_model(args.max_epochs, names)
    except ValueError as err:
        p.error(str(err))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(args.ckpt_dir or out / "ckpt")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    frames = read_frames(args.split_dir)
    for name in names:
        if args.resume and (out / f"fit_{name}.json").is_file():
            print(f"{name}: already fitted ({out / f'fit_{name}.json'}), skipped under --resume", flush=True)
            continue
        users, items, info = fit_one(name, frames, args.k, max_epochs[name], args.patience, args.seed, ckpt_dir,
                                     out / f"progress_{name}.jsonl", args.resume)
        np.savez(out / f"topk_{name}.npz", users=users, items=items)
        (out / f"fit_{name}.json").write_text(json.dumps(info, indent=1))
        print(f"{name}: {info['epochs']} epochs in {info['fit_s']} s, best valid recall@10 "
              f"{info['best_valid_recall@10']}", flush=True)


if __name__ == "__main__":
    main()
