"""Training never ends in a silent wrong answer: non-finite steps stop it, a resume continues the saved run
exactly or refuses by field, one run per output folder, Ctrl-C keeps the last finished epoch."""

import json
import os
import signal

import numpy as np
import pytest
import torch
from test_train import write_synthetic_ml1m

from hstu import run_folder
from hstu import train as train_module
from hstu.checkpoint import load_checkpoint
from hstu.cli import main
from hstu.config import ArgumentError, ModelConfig, TrainConfig
from hstu.model import HSTURecommender
from hstu.run_folder import RunExistsError
from hstu.train import ResumeMismatch, TrainingDiverged, TrainingInterrupted, resume_config, train

TINY_MODEL = dict(dim=16, num_layers=1, max_seq_len=8, num_negatives=8, dropout=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_ml1m(tmp_path_factory.mktemp("safety") / "data", users=12, length=8)


def config(data, out, **kw) -> TrainConfig:
    # on the CPU, where runs are bit-for-bit repeatable (the resume tests compare weights exactly)
    return TrainConfig(**{"data_dir": str(data), "output_dir": str(out), "epochs": 2, "batch_size": 4,
                          "progress": False, "patience": 100, "device": "cpu", "model": dict(TINY_MODEL), **kw})


def quiet(*_):
    pass


def epochs_logged(out):
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in records if "epoch" in r], records


def weights(path):
    return load_checkpoint(path)["model"]


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# --- non-finite training ---------------------------------------------------------------------------------


def test_a_diverging_lr_stops_with_the_step_and_saves_nothing(data, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["train", "--data-dir", str(data), "--output-dir", str(out), "--epochs", "2", "--batch-size", "4",
            "--dim", "16", "--num-layers", "1", "--max-seq-len", "8", "--num-negatives", "8", "--lr", "1e30"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "training stopped at epoch 1, step" in err and "non-finite" in err and "--lr" in err
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists()
    assert epochs_logged(out)[1][-1]["event"] == "diverged"


def _nan_at(monkeypatch, bad_calls):
    """Make the retrieval loss NaN on the given (1-based) calls."""
    real = HSTURecommender.retrieval_loss
    calls = []

    def loss(self, *a, **kw):
        calls.append(1)
        value = real(self, *a, **kw)
        return value * float("nan") if len(calls) in bad_calls else value

    monkeypatch.setattr(HSTURecommender, "retrieval_loss", loss)


def test_a_nan_loss_names_its_step_and_keeps_the_last_good_epoch(data, tmp_path, monkeypatch):
    # 12 users / batch 4: 3 steps per epoch; the 2nd step of epoch 2 is call 5
    _nan_at(monkeypatch, {5})
    with pytest.raises(TrainingDiverged) as err:
        train(config(data, tmp_path), log=quiet)
    assert (err.value.epoch, err.value.step) == (2, 2)
    assert "epoch 2, step 2: non-finite loss nan" in str(err.value) and "holds the last good epoch (1)" in str(err.value)
    assert load_checkpoint(tmp_path / "last.pt")["state"]["epoch"] == 1
    assert epochs_logged(tmp_path)[0] == [1]


def test_skip_nonfinite_skips_the_step(data, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {2})
    lines = []
    train(config(data, tmp_path, epochs=1, skip_nonfinite=True), log=lines.append)
    assert any("epoch 1 step 2: skipped, non-finite loss" in line for line in lines)
    records = epochs_logged(tmp_path)[1]
    assert [r["skipped_steps"] for r in records if "epoch" in r] == [1]
    assert np.isfinite(records[-1]["test_NDCG@10"])


def test_config_ranges_are_checked_by_field():
    for kw, name in [({"model": {"temperature": 0.0}}, "temperature"), ({"model": {"temperature": -1.0}}, "temperature"),
                     ({"rating_loss_weight": float("nan")}, "rating_loss_weight"), ({"batch_size": -4}, "batch_size"),
                     ({"num_targets": 0}, "num_targets"), ({"model": {"num_negatives": 0}}, "num_negatives"),
                     ({"epochs": 0}, "epochs"), ({"patience": 0}, "patience"), ({"lr": float("inf")}, "lr"),
                     ({"model": {"colour": 1}}, "model"), ({"resume": True, "overwrite": True}, "overwrite")]:
        with pytest.raises(ArgumentError) as err:
            TrainConfig(**kw)
        assert err.value.name == name and "--" not in str(err.value)
    with pytest.raises(ArgumentError, match="num_heads: must divide dim = 16, got 3"):
        ModelConfig(num_items=5, dim=16, num_heads=3)


# --- resume ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_epoch(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "out"
    train(config(data, out, epochs=1), log=quiet)
    return out


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """Two epochs in one go: what every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("straight") / "out"
    train(config(data, out), log=quiet)
    return out


def copy_run(src, dst):
    dst.mkdir(parents=True)
    for name in run_folder.RUN_FILES:
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_resume_continues_exactly(one_epoch, straight, tmp_path):
    out = copy_run(one_epoch, tmp_path / "out")
    train(resume_config(out, epochs=2), log=quiet)
    assert same_weights(weights(out / "last.pt"), weights(straight / "last.pt"))
    assert epochs_logged(out)[0] == [1, 2]


def test_resume_applies_a_new_lr_and_says_so(one_epoch, tmp_path):
    out = copy_run(one_epoch, tmp_path / "out")
    lines = []
    train(resume_config(out, epochs=2, lr=5e-4), log=lines.append)
    assert "resume: lr 0.001 -> 0.0005" in lines
    ckpt = load_checkpoint(out / "last.pt", require=("optimizer",))
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [5e-4]
    assert ckpt["train_config"]["lr"] == 5e-4
    resumed = [r for r in epochs_logged(out)[1] if r.get("event") == "resume"]
    assert resumed == [{"event": "resume", "after_epoch": 1,
                        "changed": {"epochs": [1, 2], "lr": [1e-3, 5e-4]}}]


@pytest.mark.parametrize("change", [
    {"model": {"num_heads": 2}}, {"model": {"attn_activation": "softmax"}}, {"model": {"max_attn_len": 3}},
    {"model": {"dim": 32}}, {"model": {"max_seq_len": 12}}, {"model": {"num_layers": 2}},
    {"batch_size": 2}, {"seed": 1}, {"rating_loss_weight": 0.5},
])
def test_resume_refuses_changes_to_the_model_or_data(one_epoch, tmp_path, change):
    out = copy_run(one_epoch, tmp_path / "out")
    before = (out / "last.pt").read_bytes()
    with pytest.raises(ResumeMismatch) as err:
        train(resume_config(out, epochs=2, **change), log=quiet)
    name = next(iter(change["model"])) if "model" in change else next(iter(change))
    assert name in err.value.differences and name in str(err.value)
    assert (out / "last.pt").read_bytes() == before


def test_resume_refuses_another_data_folder_and_the_cli_names_flags(one_epoch, data, tmp_path, capsys):
    out = copy_run(one_epoch, tmp_path / "out")
    other = write_synthetic_ml1m(tmp_path / "other", users=12, length=8)
    with pytest.raises(ResumeMismatch, match="data_dir"):
        train(resume_config(out, data_dir=str(other)), log=quiet)
    assert main(["train", "--output-dir", str(out), "--resume", "--num-heads", "2", "--dim", "32"]) == 2
    err = capsys.readouterr().err
    assert "--num-heads: 1 in the saved run, 2 now" in err and "--dim: 16 in the saved run, 32 now" in err
    assert "Traceback" not in err


def test_cli_resume_needs_no_flags_and_reports_nothing_left(one_epoch, straight, tmp_path, capsys):
    out = copy_run(one_epoch, tmp_path / "out")
    assert main(["train", "--output-dir", str(out), "--resume", "--epochs", "2"]) == 0
    assert same_weights(weights(out / "last.pt"), weights(straight / "last.pt"))
    capsys.readouterr()
    assert main(["train", "--output-dir", str(out), "--resume"]) == 0
    assert "nothing to train (2 of 2 epochs done)" in capsys.readouterr().out


def test_resume_trims_the_log_and_removes_stale_temporaries(one_epoch, straight, tmp_path):
    out = copy_run(one_epoch, tmp_path / "out")
    # what a SIGKILL can leave: an epoch logged but never checkpointed, a half line, a half-written checkpoint
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "loss": 0.0}) + "\n" + '{"epoch": 3, "lo')
    (out / "last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    lines = []
    train(resume_config(out, epochs=2), log=lines.append)
    assert not list(out.glob("*.tmp")) and any("last.pt.k1ll3d.tmp" in line for line in lines)
    assert epochs_logged(out)[0] == [1, 2]
    assert same_weights(weights(out / "last.pt"), weights(straight / "last.pt"))


# --- one run per folder ----------------------------------------------------------------------------------


def test_a_reused_output_dir_is_refused_unless_overwritten(one_epoch, data, tmp_path, capsys):
    out = copy_run(one_epoch, tmp_path / "out")
    before = {n: (out / n).read_bytes() for n in run_folder.RUN_FILES}
    with pytest.raises(RunExistsError):
        train(config(data, out, epochs=1), log=quiet)
    assert main(["train", "--data-dir", str(data), "--output-dir", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert {n: (out / n).read_bytes() for n in run_folder.RUN_FILES} == before
    train(config(data, out, epochs=1, seed=3, overwrite=True), log=quiet)
    epochs, records = epochs_logged(out)
    assert epochs == [1] and [r.get("event") for r in records].count("start") == 1
    assert records[0]["train_config"]["seed"] == 3


def test_an_output_dir_that_is_a_file_is_refused(data, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArgumentError, match="is a file"):
        train(config(data, tmp_path / "file"), log=quiet)


# --- Ctrl-C ----------------------------------------------------------------------------------------------


def test_ctrl_c_keeps_the_last_epoch_prints_how_to_resume_and_exits_130(data, straight, tmp_path, capsys,
                                                                         monkeypatch):
    out = tmp_path / "out"
    real, calls = train_module.training_batch, []

    def interrupting(*a, **kw):
        calls.append(1)
        if len(calls) == 5:  # epoch 2, step 2
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(train_module, "training_batch", interrupting)
    args = ["train", "--data-dir", str(data), "--output-dir", str(out), "--epochs", "2", "--batch-size", "4",
            "--dim", "16", "--num-layers", "1", "--max-seq-len", "8", "--num-negatives", "8", "--dropout", "0",
            "--patience", "100", "--device", "cpu"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted during epoch 2" in err and f"{out / 'last.pt'} holds epoch 1" in err
    assert f"resume with: hstu train --output-dir {out} --resume" in err and "Traceback" not in err
    monkeypatch.setattr(train_module, "training_batch", real)
    assert main(["train", "--output-dir", str(out), "--resume"]) == 0
    assert same_weights(weights(out / "last.pt"), weights(straight / "last.pt"))
    assert epochs_logged(out)[0] == [1, 2]


def test_ctrl_c_while_an_epoch_is_saved_waits_for_the_save(data, tmp_path, monkeypatch):
    real = run_folder.append_log

    def signalled(folder, record):
        real(folder, record)
        if record.get("epoch") == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(run_folder, "append_log", signalled)
    with pytest.raises(TrainingInterrupted) as err:
        train(config(data, tmp_path), log=quiet)
    assert err.value.epoch == 1 and err.value.checkpoint == tmp_path / "last.pt"
    assert load_checkpoint(tmp_path / "best.pt")["state"]["epoch"] == 1
    assert load_checkpoint(tmp_path / "last.pt")["state"]["epoch"] == 1


def test_a_checkpoint_saved_before_a_default_changed_loads_and_resumes_as_it_was(data, tmp_path):
    from hstu.checkpoint import save_checkpoint
    from hstu.config import LEGACY_MODEL_VALUES
    from hstu.serving import load_for_inference

    out = tmp_path / "old"
    train(config(data, out, epochs=1, model={**TINY_MODEL, **LEGACY_MODEL_VALUES}), log=quiet)
    for name in ("last.pt", "best.pt"):  # as an older hstu wrote them: no such fields, no such flags
        ckpt = load_checkpoint(out / name)
        for field in LEGACY_MODEL_VALUES:
            del ckpt["model_config"][field]
            del ckpt["train_config"]["model"][field]
        save_checkpoint(out / name, ckpt)
    model, *_ = load_for_inference(out / "best.pt", str(data), "ml-1m", "cpu")
    assert {k: getattr(model.config, k) for k in LEGACY_MODEL_VALUES} == LEGACY_MODEL_VALUES
    assert model.encoder.embedding.mlp is not None
    train(resume_config(out, epochs=2), log=quiet)
    assert epochs_logged(out)[0] == [1, 2]


def test_lr_decays_after_lr_patience_stale_epochs_and_a_resume_keeps_the_decay(data, tmp_path):
    cfg = dict(epochs=6, lr=0.1, lr_decay=0.5, lr_patience=1, lr_decays=3)
    straight = tmp_path / "straight"
    train(config(data, straight, **cfg), log=quiet)
    records = epochs_logged(straight)[1]
    epochs = [r for r in records if "seconds" in r]
    lr, best, want, decays = 0.1, -1.0, [], 0
    for r in epochs:  # the lr an epoch trained with: halved after each epoch without a better validation NDCG@10,
        want.append(lr)  # three times at most
        if r["valid_NDCG@10"] > best:
            best = r["valid_NDCG@10"]
        elif decays < 3:
            lr, decays = lr * 0.5, decays + 1
    assert [r["lr"] for r in epochs] == pytest.approx(want)
    assert want[-1] < 0.1, "the run never decayed: the test shows nothing"
    # three epochs, then a resume to six: the same weights as the straight run
    part = tmp_path / "part"
    train(config(data, part, **{**cfg, "epochs": 3}), log=quiet)
    train(resume_config(part, epochs=6), log=quiet)
    assert same_weights(weights(part / "last.pt"), weights(straight / "last.pt"))
    assert [r["lr"] for r in epochs_logged(part)[1] if "seconds" in r] == pytest.approx(want)


def test_a_run_saved_before_the_lr_schedule_resumes_with_a_constant_lr(one_epoch, tmp_path):
    from hstu.checkpoint import save_checkpoint

    out = copy_run(one_epoch, tmp_path / "out")
    ckpt = load_checkpoint(out / "last.pt")
    for key in ("lr_decay", "lr_patience", "lr_decays"):
        del ckpt["train_config"][key]
    for key in ("lr_scale", "decays"):
        del ckpt["state"][key]
    save_checkpoint(out / "last.pt", ckpt)
    assert resume_config(out, epochs=2).lr_decays == 0
    train(resume_config(out, epochs=2), log=quiet)
    assert [r["lr"] for r in epochs_logged(out)[1] if "seconds" in r][-1] == pytest.approx(1e-3)
