"""Training loop: AdamW, retrieval + rating losses, validation each epoch, early stopping, resumable.

A run owns its output folder (``best.pt``, ``last.pt``, ``log.jsonl``). A resumed run continues the saved one
exactly; only the ``RESUMABLE`` settings may change, and each change is logged. A non-finite loss, gradient,
weight or validation score stops training (``TrainingDiverged``) before anything non-finite is saved, unless
``skip_nonfinite`` skips such steps. Ctrl-C drops the unfinished epoch and raises ``TrainingInterrupted``;
``last.pt`` then holds the last finished one.

Under ``torchrun`` (see ``hstu.distributed``) the model is wrapped in ``DistributedDataParallel`` and every rank
draws the same global batches, cuts and negatives from the same seeded streams and trains on its contiguous share
of each batch's users; the losses are each rank's sums over the global batch's counts, so the averaged gradient is
the one process's gradient of the global batch, and a run does not depend on its rank count (a resume may change
it). ``batch_size`` is the global batch. Validation and test metrics are reduced across ranks; rank 0 alone writes
checkpoints and logs, prints and draws progress bars.
"""

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, fields
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed, run_folder
from .checkpoint import CheckpointError, load_checkpoint, non_finite_tensors, remove_stale_temporaries, save_checkpoint
from .config import (
    LEGACY_MODEL_VALUES, LEGACY_TRAIN_VALUES, MODEL_FIELDS, RESUMABLE, RUN_CONTROL, ArgumentError, ModelConfig, TrainConfig, saved_model_fields,
)
from .data.batching import length_bucketed_batches, training_batch
from .evaluate import evaluate_model, evaluate_popularity
from .model import HSTURecommender

__all__ = [
    "TrainConfig", "TrainingDiverged", "TrainingInterrupted", "ResumeMismatch", "train", "resume_config",
    "resolve_device", "load_sequences",
]

# what resuming needs from last.pt beyond the weights
TRAINING_ENTRIES = ("model_config", "model", "train_config", "optimizer", "state", "numpy_rng", "torch_rng",
                    "item_ids", "data_dir")


class TrainingDiverged(RuntimeError):
    """A non-finite loss, gradient, weight or validation score stopped training. ``epoch`` and ``step`` (1-based;
    0 when not one step) say where; ``checkpoint`` is the last good ``last.pt`` (None when none was written)."""

    def __init__(self, message: str, epoch: int, step: int, checkpoint: Optional[Path]):
        super().__init__(message)
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the unfinished epoch was dropped. ``epoch``: the epochs ``checkpoint`` (the
    run's ``last.pt``, None when none was written) holds; ``output_dir``: the run's folder."""

    def __init__(self, message: str, epoch: int, checkpoint: Optional[Path], output_dir: Path):
        super().__init__(message)
        self.epoch, self.checkpoint, self.output_dir = epoch, checkpoint, output_dir

    def __str__(self) -> str:
        return self.args[0]


class ResumeMismatch(ValueError):
    """A resume asked for settings the saved run does not have. ``differences``: ``{field: (saved, asked)}``
    (model fields by name, ``data_dir`` / ``items`` for the data)."""

    def __init__(self, checkpoint: Path, differences: Dict[str, tuple]):
        listed = ", ".join(f"{k} {saved!r} -> {asked!r}" for k, (saved, asked) in differences.items())
        super().__init__(
            f"cannot resume {checkpoint}: the saved run differs in {listed}; a resumed run may change only "
            f"{', '.join(RESUMABLE)} (start a new run for anything else)"
        )
        self.checkpoint, self.differences = checkpoint, differences


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when present, else the CPU) or a torch device name that this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ArgumentError("device", f"{name!r} is not a device: expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError("device", f"{name!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ArgumentError("device", f"{name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ArgumentError("device", f"{name!r}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise ArgumentError("device", f"{name!r}: hstu runs on cpu, cuda or mps")
    return dev


def load_sequences(data_dir, dataset: str):
    """MovieLens events as leave-one-out-ready ``UserSequences`` plus the loaded data (titles, raw ids).
    ValueError when no user has the 3 events the split needs."""
    from .data.movielens import load_movielens
    from .data.sequences import MIN_EVENTS, leave_one_out

    data = load_movielens(data_dir, dataset)
    seqs = leave_one_out(data.sequences)
    if len(seqs) == 0:
        raise ValueError(
            f"{data.data_dir}: none of its {len(data.sequences)} users has {MIN_EVENTS} or more ratings, which the "
            "leave-one-out split needs (train events, a validation and a test target): nothing to train or evaluate"
        )
    return data, seqs


def resume_config(output_dir, model: Optional[dict] = None, **changes) -> TrainConfig:
    """The ``TrainConfig`` of the run saved in ``output_dir/last.pt`` (reading the data folder it read), with
    ``changes`` (config fields) and the model fields ``model`` applied and ``resume`` set; ``train`` refuses the
    changes a resume may not make."""
    path = Path(output_dir) / "last.pt"
    ckpt = load_checkpoint(path, require=("train_config", "data_dir"))
    known = {f.name for f in fields(TrainConfig)}
    saved = {k: v for k, v in {**LEGACY_TRAIN_VALUES, **ckpt["train_config"]}.items() if k in known}
    # the folder the run read, resolved when it started: a relative data_dir or $HSTU_DATA_DIR can point
    # elsewhere when the run is resumed
    saved["data_dir"] = ckpt["data_dir"]
    # the saved model dict holds the flags the run was started with; fields it predates keep their old values
    predated = {k: v for k, v in LEGACY_MODEL_VALUES.items() if k not in ckpt.get("model_config", {})}
    saved["model"] = {**predated, **saved.get("model", {}), **(model or {})}
    return TrainConfig(**{**saved, **changes, "output_dir": str(output_dir), "resume": True, "overwrite": False})


def _resume_differences(ckpt: dict, cfg: TrainConfig, model_cfg: ModelConfig, meta: dict):
    """``(refused, applied)``: ``{field: (saved, asked)}`` for the settings a resume may not and may change."""
    saved, asked = {**LEGACY_TRAIN_VALUES, **ckpt["train_config"]}, cfg.to_dict()
    refused, applied = {}, {}
    for name, value in asked.items():
        if name in RUN_CONTROL or name in ("model", "data_dir", "dataset", "output_dir"):
            continue
        if saved.get(name) != value:
            (applied if name in RESUMABLE else refused)[name] = (saved.get(name), value)
    saved_model, asked_model = saved_model_fields(ckpt["model_config"]), asdict(model_cfg)
    for name in ("num_items", "num_actions", *MODEL_FIELDS):
        if saved_model.get(name) != asked_model[name]:
            refused[name] = (saved_model.get(name), asked_model[name])
    if ckpt["data_dir"] != meta["data_dir"]:
        refused["data_dir"] = (ckpt["data_dir"], meta["data_dir"])
    elif list(ckpt["item_ids"]) != meta["item_ids"] and "num_items" not in refused:
        refused["items"] = ("the items of the saved run", "other items (the data changed)")
    return refused, applied


def _load_state(module, state, path: Path, what: str) -> None:
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path}: its {what} does not fit its configuration ({first[:200]})") from None


def _silent(*_):
    pass


def _prepare_folder(out_dir, cfg, ckpt, state, applied, model_cfg, meta, log, ctx) -> None:
    """Rank 0's setup of the output folder: stale temporaries, ``overwrite``, the log's start or resume line."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for tmp in remove_stale_temporaries(out_dir, run_folder.CHECKPOINTS):
        log(f"removed {tmp}, left by a checkpoint write that never finished")
    if cfg.overwrite:
        removed = run_folder.clear_run(out_dir)
        if removed:
            log(f"overwrite: deleted the previous run's {', '.join(removed)} in {out_dir}")
    if ckpt is not None:
        run_folder.trim_log(out_dir, state["epoch"])
        run_folder.append_log(out_dir, {"event": "resume", "after_epoch": state["epoch"],
                                        "changed": {k: list(v) for k, v in applied.items()},
                                        **({"ranks": ctx.world} if ctx.active else {})})
    else:
        run_folder.append_log(out_dir, {"event": "start", "train_config": cfg.to_dict(),
                                        "model_config": asdict(model_cfg), "data_dir": meta["data_dir"],
                                        **({"ranks": ctx.world} if ctx.active else {})})


def _data_parallel(model):
    """``model`` under DDP without the buffer broadcast before each step: its buffers are constants built alike
    on every rank (the name of that switch changed in torch 2.13)."""
    import inspect

    ddp = torch.nn.parallel.DistributedDataParallel
    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
               else "broadcast_buffers")
    return ddp(model, **{no_sync: False})


def _sharded_losses(model, ctx, batch, out, rating_pred, tgt, batch_users: int, device):
    """This rank's retrieval and rating losses as its share of the global batch's means: sums over its tokens
    divided by the global counts, times the rank count (DDP averages the ranks' gradients).

    The negatives are drawn as one process draws them for the global batch, and this rank keeps its rows: under
    ``negatives = "sequence"`` the ``2 * batch_users`` segments' sets; under ``"position"`` the ``[R, K]`` sets
    of the global batch's labelled positions, of which this rank's are one contiguous block (its users'
    retrieval segments are contiguous, and rating segments carry no labels).
    """
    cfg = model.config
    labelled = batch.next_items > 0
    # per-rank labelled counts (for this rank's block of per-position draws) and the global target count
    counts = torch.zeros(ctx.world + 1, dtype=torch.float64, device=device)
    counts[ctx.rank] = labelled.sum()
    counts[-1] = tgt.sum()
    counts = ctx.all_reduce_sum(counts)
    if cfg.negatives == "position":
        start = int(counts[:ctx.rank].sum())
        negs = torch.randint(1, cfg.num_items + 1, (int(counts[:-1].sum()), cfg.num_negatives), device=device)
        negs = negs[start:start + int(labelled.sum())]
    else:
        negs = torch.randint(1, cfg.num_items + 1, (2 * batch_users, cfg.num_negatives), device=device)
        negs = negs[torch.from_numpy(distributed.shard_rows(ctx, batch_users)).to(device)]
    total = counts[:-1].sum().clamp(min=1)
    retrieval = model.retrieval_loss(out, batch.next_items, batch.seq_offsets, negatives=negs, reduction="sum")
    rating = F.mse_loss(rating_pred.float(), batch.ratings[tgt].float(), reduction="sum")
    return retrieval * (ctx.world / total).float(), rating * (ctx.world / counts[-1].clamp(min=1)).float()


# the training step's last block computes only the rows the losses read (False: every row, as before;
# bench/bench_train.py times both)
SKIP_UNUSED_ROWS = True


class _NonFinite(Exception):
    def __init__(self, what: str, step: int):
        super().__init__(what)
        self.what, self.step = what, step


def train(cfg: TrainConfig, log=print) -> Dict[str, float]:
    """Train, keep the checkpoint with the best validation NDCG@10, and return its test metrics.

    Raises ``ArgumentError`` / ``RunExistsError`` for a bad output folder, ``ResumeMismatch`` for a resume that
    changes the model or data, ``TrainingDiverged`` and ``TrainingInterrupted`` (see the module docstring).
    """
    device = resolve_device(cfg.device)
    ctx, device = distributed.start(device)
    try:
        return _train(cfg, log, device, ctx)
    except RuntimeError as err:
        # DDP's own collectives (the gradient all-reduce in backward()) fail outside those hstu.distributed guards
        if not (ctx.active and distributed.is_comm_error(err)) or isinstance(err, distributed.RankLost):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise distributed.RankLost(distributed.lost_message(ctx, "training", first)) from None
    finally:
        ctx.close()


def _train(cfg: TrainConfig, log, device: torch.device, ctx: distributed.Context) -> Dict[str, float]:
    main = ctx.is_main
    if not main:
        log = _silent
    elif ctx.active:
        log(f"data-parallel: {ctx.world} ranks ({'nccl' if device.type == 'cuda' else 'gloo'}), global batch "
            f"{cfg.batch_size} users")
    out_dir = Path(cfg.output_dir)
    run_folder.check_output_dir(out_dir, cfg.resume, cfg.overwrite)
    ckpt = load_checkpoint(out_dir / "last.pt", map_location=device, require=TRAINING_ENTRIES) if cfg.resume else None
    data, seqs = load_sequences(cfg.data_dir, cfg.dataset)
    log(f"data: {data.name} from {data.data_dir}: {len(seqs)} users, {seqs.num_items} items, {len(seqs.items)} events")

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model_cfg = ModelConfig(num_items=seqs.num_items, **cfg.model)
    meta = {"item_ids": data.item_ids.tolist(), "data_dir": str(Path(data.data_dir).resolve()), "dataset": data.name}
    applied = {}
    if ckpt is not None:
        refused, applied = _resume_differences(ckpt, cfg, model_cfg, meta)
        if refused:
            raise ResumeMismatch(out_dir / "last.pt", refused)
    model = HSTURecommender(model_cfg).to(device)
    # fused: one kernel for every parameter instead of a dozen ops each (about 3x faster a step on the CPU)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay,
                            fused=True if device.type in ("cpu", "cuda") else None)
    state = {"epoch": 0, "best_ndcg": -1.0, "best_epoch": 0, "stale": 0, "lr_scale": 1.0, "decays": 0}
    if ckpt is not None:
        _load_state(model, ckpt["model"], out_dir / "last.pt", "model weights")
        _load_state(opt, ckpt["optimizer"], out_dir / "last.pt", "optimizer state")
        # the optimizer state carries the saved lr: the asked one wins (it equals the saved one unless changed),
        # times the decay the run has applied so far
        state = {"lr_scale": 1.0, "decays": 0, **ckpt["state"]}
        for group in opt.param_groups:
            group["lr"] = cfg.lr * state["lr_scale"]
        rng.bit_generator.state = ckpt["numpy_rng"]
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        # the negatives are drawn on the model's device: on CUDA its generator is part of the run too
        cuda_rng = ckpt.get("cuda_rng") or []
        if device.type == "cuda" and ctx.active and ckpt.get("device_rng") is not None:
            # every rank draws the negatives on its own GPU from the stream rank 0 saved
            torch.cuda.set_rng_state(ckpt["device_rng"].cpu(), device)
        elif device.type == "cuda" and len(cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.cpu() for t in cuda_rng])
        log(f"resumed from {out_dir / 'last.pt'} after epoch {state['epoch']}")
        for name, (was, now) in applied.items():
            log(f"resume: {name} {was!r} -> {now!r}")

    # every rank has read the folder before rank 0 changes it
    ctx.barrier("checking the output folder")
    if main:
        _prepare_folder(out_dir, cfg, ckpt, state, applied, model_cfg, meta, log, ctx)
    # the whole model is replicated; DDP broadcasts rank 0's weights and averages the gradients
    net = _data_parallel(model) if ctx.active else model

    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (cfg.amp and device.type == "cuda") else nullcontext()
    eval_kw = dict(batch_size=cfg.eval_batch_size, device=device, progress=cfg.progress and main, ctx=ctx)
    last_path = out_dir / "last.pt"

    def checkpoint(path):
        if not main:
            return
        save_checkpoint(path, {
            "model_config": model.config_dict(), "train_config": cfg.to_dict(), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "state": dict(state), "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            "device_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None, **meta,
        })

    def last_good():
        return (last_path if last_path.is_file() else None), state["epoch"]

    def diverged(what, epoch, step):
        path, done = last_good()
        where = f"{path} holds the last good epoch ({done})" if path else "no checkpoint was written"
        at = f"epoch {epoch}, step {step}" if step else f"epoch {epoch}"
        if main:
            run_folder.append_log(out_dir, {"event": "diverged", "at_epoch": epoch, "at_step": step, "reason": what})
        return TrainingDiverged(f"training stopped at {at}: {what}; {where}", epoch, step, path)

    def run_epoch(epoch):
        model.train()
        batches = length_bucketed_batches(seqs.lengths(), cfg.batch_size, rng)
        totals, done, skipped = np.zeros(3), 0, 0
        bar = tqdm(batches, desc=f"epoch {epoch}", disable=not (cfg.progress and main), leave=False)
        for step, users in enumerate(bar, 1):
            if ctx.active and len(users) < ctx.world:
                # a rank without users cannot join the step; only a last batch smaller than the rank count is
                # this short, and its draws are made all the same, so the next epoch starts alike
                training_batch(seqs, users, model_cfg.max_seq_len, cfg.num_targets, rng)
                torch.randint(1, model_cfg.num_items + 1, (2 * len(users), model_cfg.num_negatives), device=device)
                log(f"epoch {epoch} step {step}: dropped, {len(users)} user{'s' * (len(users) > 1)} for {ctx.world} ranks")
                continue
            part = ctx.shard(len(users))
            batch = training_batch(seqs, users, model_cfg.max_seq_len, cfg.num_targets, rng, part).to(device)
            with amp:
                tgt = batch.ratings > 0
                target_rows = tgt.nonzero().squeeze(1)
                if SKIP_UNUSED_ROWS and not model_cfg.fused:
                    # the retrieval segments (the first half) need every row, the rating segments only their
                    # targets: the last block skips the other rows' attention (their outputs are zero, unused)
                    retrieval_segments = (batch.seq_offsets.numel() - 1) // 2
                    out = net(batch, rows=target_rows, dense_segments=retrieval_segments)
                else:
                    out = net(batch)
                # index_select, not out[tgt]: its gradient is an index_add rather than a sorting index_put
                rating_pred = model.predict_ratings(out.index_select(0, target_rows))
            if ctx.active:
                retrieval, rating = _sharded_losses(model, ctx, batch, out, rating_pred, tgt, len(users), device)
            else:
                retrieval = model.retrieval_loss(out, batch.next_items, batch.seq_offsets)
                rating = F.mse_loss(rating_pred.float(), batch.ratings[tgt].float())
            loss = retrieval + cfg.rating_loss_weight * rating
            opt.zero_grad(set_to_none=True)
            if ctx.active:
                # the global batch's losses: every rank takes the same skip / stop decision
                parts = ctx.all_reduce_sum(torch.stack([retrieval.detach(), rating.detach()]).float()) / ctx.world
                value = (parts[0] + cfg.rating_loss_weight * parts[1]).item()
                shown = (parts[0].item(), parts[1].item())
            else:
                value = loss.item()
                shown = None
            problem = None
            if not math.isfinite(value):
                problem = f"non-finite loss {value} (retrieval {retrieval.item()}, rating {rating.item()})"
            else:
                loss.backward()
                # with an infinite max_norm this clips nothing: it is the total gradient norm, computed once
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()
                if not math.isfinite(norm):
                    problem = f"non-finite gradient norm {norm} (loss {value:.4g})"
            if problem is not None:
                if not cfg.skip_nonfinite:
                    raise _NonFinite(problem, step)
                skipped += 1
                log(f"epoch {epoch} step {step}: skipped, {problem}")
                opt.zero_grad(set_to_none=True)
                continue
            opt.step()
            totals += [value, *(shown or (retrieval.item(), rating.item()))]
            done += 1
            bar.set_postfix(loss=f"{value:.3f}")
        if done == 0:
            raise _NonFinite(f"all {skipped} steps of the epoch were non-finite and skipped", 0)
        bad = non_finite_tensors(model.state_dict())
        if bad:
            raise _NonFinite(f"non-finite weights after the epoch's last step ({', '.join(bad[:3])}"
                             f"{', ...' if len(bad) > 3 else ''})", 0)
        return totals / done, skipped

    phase = "setup"
    try:
        if state["epoch"] >= cfg.epochs or state["stale"] >= cfg.patience:
            why = (f"{state['epoch']} of {cfg.epochs} epochs done" if state["epoch"] >= cfg.epochs
                   else f"early-stopped: {state['stale']} epochs without improvement, patience {cfg.patience}")
            log(f"nothing to train ({why}); testing {out_dir / 'best.pt'}")
        while state["epoch"] < cfg.epochs and state["stale"] < cfg.patience:
            epoch = state["epoch"] + 1
            phase = f"epoch {epoch}"
            start = time.time()
            try:
                means, skipped = run_epoch(epoch)
            except _NonFinite as err:
                raise diverged(err.what, epoch, err.step) from None
            valid = evaluate_model(model, seqs, "valid", **eval_kw)
            if valid["non_finite_users"] or not math.isfinite(valid["NDCG@10"]):
                raise diverged(f"non-finite validation scores for {valid['non_finite_users']} users", epoch, 0)
            record = {
                "epoch": epoch, "loss": means[0], "retrieval_loss": means[1], "rating_loss": means[2],
                "skipped_steps": skipped, "seconds": round(time.time() - start, 2), "lr": opt.param_groups[0]["lr"],
                **{f"valid_{k}": v for k, v in valid.items()},
            }
            # log line first, then checkpoints: a resume from an older last.pt drops the extra line
            with run_folder.interrupts_deferred() if main else nullcontext():
                improved = valid["NDCG@10"] > state["best_ndcg"]
                state["epoch"] = epoch
                if improved:
                    state.update(best_ndcg=valid["NDCG@10"], best_epoch=epoch, stale=0)
                else:
                    state["stale"] += 1
                decay = not improved and state["decays"] < cfg.lr_decays and state["stale"] >= cfg.lr_patience
                if decay:
                    stale_before = state["stale"]
                    state.update(lr_scale=state["lr_scale"] * cfg.lr_decay, decays=state["decays"] + 1, stale=0)
                    for group in opt.param_groups:
                        group["lr"] = cfg.lr * state["lr_scale"]
                if main:
                    run_folder.append_log(out_dir, record)
                if improved:
                    checkpoint(out_dir / "best.pt")
                checkpoint(last_path)
            log(
                f"epoch {epoch}: loss {record['loss']:.4f} (retrieval {record['retrieval_loss']:.4f}, rating "
                f"{record['rating_loss']:.4f}) valid HR@10 {valid['HR@10']:.4f} NDCG@10 {valid['NDCG@10']:.4f} "
                f"[{record['seconds']:.1f}s]" + (f" ({skipped} steps skipped)" if skipped else "")
                + (f"; lr -> {cfg.lr * state['lr_scale']:.3g} ({stale_before} epochs without improvement, decay "
                   f"{state['decays']} of {cfg.lr_decays})" if decay else "")
            )

        phase = "the final test evaluation"
        # rank 0 has written best.pt before the others read it
        ctx.barrier("waiting for rank 0's checkpoint")
        best = load_checkpoint(out_dir / "best.pt", map_location=device)
        model.load_state_dict(best["model"])
        test = evaluate_model(model, seqs, "test", **eval_kw)
        pop = evaluate_popularity(seqs, "test", max_seq_len=model_cfg.max_seq_len, **eval_kw)
    except KeyboardInterrupt:
        path, done = last_good()
        held = f"{path} holds epoch {done}" if path else "no checkpoint was written"
        if main:
            run_folder.append_log(out_dir, {"event": "interrupted", "during": phase, "last_epoch": done})
        raise TrainingInterrupted(f"interrupted during {phase} (its partial work is dropped); {held}",
                                  done, path, out_dir) from None
    best_epoch = best["state"]["best_epoch"]
    if main:
        run_folder.append_log(out_dir, {"best_epoch": best_epoch, **{f"test_{k}": v for k, v in test.items()},
                                        **{f"popularity_{k}": v for k, v in pop.items()}})
    log(f"best epoch {best_epoch} (checkpoint {out_dir / 'best.pt'})")
    log(f"test HR@10 {test['HR@10']:.4f}  NDCG@10 {test['NDCG@10']:.4f}  "
        f"(most-popular baseline: HR@10 {pop['HR@10']:.4f}  NDCG@10 {pop['NDCG@10']:.4f})")
    return {**test, "popularity": pop, "best_epoch": best_epoch}
