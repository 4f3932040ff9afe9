"""Training loop: AdamW, retrieval + rating losses, validation each epoch, early stopping, resumable."""

import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .data.batching import length_bucketed_batches, training_batch
from .evaluate import evaluate_model, evaluate_popularity
from .model import HSTURecommender, ModelConfig


@dataclass
class TrainConfig:
    data_dir: Optional[str] = None
    dataset: str = "ml-1m"
    output_dir: str = "runs/hstu"
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    rating_weight: float = 1.0
    num_targets: int = 4
    patience: int = 10
    eval_batch_size: int = 256
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    resume: bool = False
    progress: bool = True
    model: Dict = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return dev


def load_sequences(data_dir, dataset: str):
    """MovieLens events as leave-one-out-ready ``UserSequences`` plus the loaded data (titles, raw ids)."""
    from .data.movielens import load_movielens
    from .data.sequences import leave_one_out

    data = load_movielens(data_dir, dataset)
    return data, leave_one_out(data.sequences)


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig, log=print) -> Dict[str, float]:
    """Train, keep the checkpoint with the best validation NDCG@10, and return its test metrics."""
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data, seqs = load_sequences(cfg.data_dir, cfg.dataset)
    log(f"data: {data.name} from {data.data_dir}: {len(seqs)} users, {seqs.num_items} items, {len(seqs.items)} events")

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model_cfg = ModelConfig(num_items=seqs.num_items, **cfg.model)
    model = HSTURecommender(model_cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    state = {"epoch": 0, "best_ndcg": -1.0, "best_epoch": 0, "stale": 0}
    if cfg.resume:
        ckpt = load_checkpoint(out_dir / "last.pt", map_location=device)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        rng.bit_generator.state = ckpt["numpy_rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        log(f"resumed from {out_dir / 'last.pt'} after epoch {state['epoch']}")
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (cfg.amp and device.type == "cuda") else nullcontext()
    eval_kw = dict(batch_size=cfg.eval_batch_size, device=device, progress=cfg.progress)
    meta = {"item_ids": data.item_ids.tolist(), "data_dir": str(Path(data.data_dir).resolve()), "dataset": data.name}

    def checkpoint(path):
        save_checkpoint(path, {
            "model_config": model.config_dict(), "train_config": asdict(cfg), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "state": dict(state), "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), **meta,
        })

    while state["epoch"] < cfg.epochs and state["stale"] < cfg.patience:
        epoch = state["epoch"] + 1
        model.train()
        start = time.time()
        batches = length_bucketed_batches(seqs.lengths(), cfg.batch_size, rng)
        totals = np.zeros(3)
        bar = tqdm(batches, desc=f"epoch {epoch}", disable=not cfg.progress, leave=False)
        for users in bar:
            batch = training_batch(seqs, users, model_cfg.max_seq_len, cfg.num_targets, rng)
            batch = batch.to(device)
            with amp:
                out = model(batch)
                tgt = batch.ratings > 0
                rating_pred = model.predict_ratings(out[tgt])
            retrieval = model.retrieval_loss(out, batch.next_items, batch.seq_offsets)
            rating = F.mse_loss(rating_pred.float(), batch.ratings[tgt].float())
            loss = retrieval + cfg.rating_weight * rating
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            totals += [loss.item(), retrieval.item(), rating.item()]
            bar.set_postfix(loss=f"{loss.item():.3f}")
        n_batches = max(1, len(bar))
        valid = evaluate_model(model, seqs, "valid", **eval_kw)
        state["epoch"] = epoch
        if valid["NDCG@10"] > state["best_ndcg"]:
            state.update(best_ndcg=valid["NDCG@10"], best_epoch=epoch, stale=0)
            checkpoint(out_dir / "best.pt")
        else:
            state["stale"] += 1
        checkpoint(out_dir / "last.pt")
        record = {
            "epoch": epoch, "loss": totals[0] / n_batches, "retrieval_loss": totals[1] / n_batches,
            "rating_loss": totals[2] / n_batches, "seconds": round(time.time() - start, 2),
            **{f"valid_{k}": v for k, v in valid.items()},
        }
        _log(out_dir / "log.jsonl", record)
        log(
            f"epoch {epoch}: loss {record['loss']:.4f} (retrieval {record['retrieval_loss']:.4f}, rating "
            f"{record['rating_loss']:.4f}) valid HR@10 {valid['HR@10']:.4f} NDCG@10 {valid['NDCG@10']:.4f} "
            f"[{record['seconds']:.1f}s]"
        )

    best = load_checkpoint(out_dir / "best.pt", map_location=device)
    model.load_state_dict(best["model"])
    test = evaluate_model(model, seqs, "test", **eval_kw)
    pop = evaluate_popularity(seqs, "test", max_seq_len=model_cfg.max_seq_len, **eval_kw)
    _log(out_dir / "log.jsonl", {"best_epoch": best["state"]["best_epoch"], **{f"test_{k}": v for k, v in test.items()},
                                 **{f"popularity_{k}": v for k, v in pop.items()}})
    log(f"best epoch {best['state']['best_epoch']} (checkpoint {out_dir / 'best.pt'})")
    log(f"test HR@10 {test['HR@10']:.4f}  NDCG@10 {test['NDCG@10']:.4f}  "
        f"(most-popular baseline: HR@10 {pop['HR@10']:.4f}  NDCG@10 {pop['NDCG@10']:.4f})")
    return {**test, "popularity": pop, "best_epoch": best["state"]["best_epoch"]}
