"""Training, evaluation and the command line, on generated MovieLens-1M files and on the real ml-100k."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hstu.checkpoint import load_checkpoint
from hstu.cli import main
from hstu.train import TrainConfig, train

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SMALL_MODEL = dict(dim=16, num_layers=2, max_seq_len=16, num_negatives=16, dropout=0.0)


def write_synthetic_ml1m(folder: Path, users=40, items=30, length=25, seed=0) -> Path:
    """A learnable ML-1M-format folder: each user walks the catalogue in order (item i, then i + 1, ...)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for user in range(1, users + 1):
        start, t = rng.integers(items), 978300000 + user * 1000
        for step in range(length):
            item = 1 + (start + step) % items
            t += int(rng.integers(0, 5000))
            lines.append(f"{user}::{item * 10}::{rng.integers(1, 6)}::{t}")
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    movies = [f"{i * 10}::Movie {i} (1999)::Drama" for i in range(1, items + 1)]
    (folder / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    data = write_synthetic_ml1m(root / "data")
    out = root / "out"
    lines = []
    cfg = TrainConfig(data_dir=str(data), output_dir=str(out), epochs=6, batch_size=8, patience=100,
                      progress=False, model=SMALL_MODEL)
    result = train(cfg, log=lines.append)
    return dict(data=data, out=out, lines=lines, result=result, cfg=cfg)


def test_training_loss_falls_and_metrics_are_printed(trained):
    records = [json.loads(x) for x in (trained["out"] / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5, 6]
    assert epochs[-1]["loss"] < 0.8 * epochs[0]["loss"]
    assert "test_NDCG@10" in records[-1]
    final = trained["lines"][-1]
    assert "HR@10" in final and "NDCG@10" in final
    # the walk is perfectly predictable: the model must beat popularity, which is uniform here
    assert trained["result"]["NDCG@10"] > trained["result"]["popularity"]["NDCG@10"]
    for name in ("best.pt", "last.pt"):
        assert (trained["out"] / name).is_file()
    assert not list(trained["out"].glob("*.tmp"))


def test_resume_continues_after_the_last_epoch(trained, tmp_path):
    out = tmp_path / "resumed"
    out.mkdir()
    for name in ("last.pt", "best.pt", "log.jsonl"):
        (out / name).write_bytes((trained["out"] / name).read_bytes())
    lines = []
    cfg = TrainConfig(**{**trained["cfg"].__dict__, "output_dir": str(out), "epochs": 7, "resume": True})
    train(cfg, log=lines.append)
    assert any("resumed" in x and "epoch 6" in x for x in lines)
    epochs = [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines() if '"epoch"' in x]
    assert epochs == [1, 2, 3, 4, 5, 6, 7]


def test_resume_without_a_checkpoint_is_a_clear_error(trained, tmp_path):
    cfg = TrainConfig(**{**trained["cfg"].__dict__, "output_dir": str(tmp_path / "empty"), "resume": True})
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(cfg, log=lambda *_: None)


def test_cli_eval_prints_every_metric(trained, capsys):
    assert main(["eval", "--checkpoint", str(trained["out"] / "best.pt"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("HR@10", "HR@50", "HR@200", "NDCG@10", "NDCG@50", "NDCG@200", "MRR", "RMSE", "MAE"):
        assert 0 <= metrics[key] <= (5 if key in ("RMSE", "MAE") else 1), key
    assert metrics["NDCG@10"] == pytest.approx(trained["result"]["NDCG@10"])
    assert main(["eval", "--checkpoint", str(trained["out"] / "best.pt"), "--keep-seen"]) == 0
    assert "NDCG@10" in capsys.readouterr().out


def test_cli_recommend_prints_titles_and_rejects_unknown_users(trained, capsys):
    assert main(["recommend", "--checkpoint", str(trained["out"] / "best.pt"), "--user", "3", "-k", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("Movie ") == 5
    assert main(["recommend", "--checkpoint", str(trained["out"] / "best.pt"), "--user", "999"]) == 2
    assert "no such user" in capsys.readouterr().err


def test_cli_train_prints_test_metrics(tmp_path, capsys):
    data = write_synthetic_ml1m(tmp_path / "data", users=12, length=8)
    args = ["train", "--data-dir", str(data), "--output-dir", str(tmp_path / "out"), "--epochs", "2",
            "--batch-size", "4", "--dim", "16", "--max-seq-len", "8", "--num-negatives", "8", "--num-heads", "2",
            "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "epoch 2:" in out and "test HR@10" in out and "NDCG@10" in out
    cfg = load_checkpoint(tmp_path / "out" / "best.pt")["model_config"]
    assert cfg["num_heads"] == 2 and cfg["max_seq_len"] == 8


def test_cli_reports_missing_data_clearly(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "ratings.dat" in err and "u.data" in err


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "hstu", "train", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--data-dir" in res.stdout


@pytest.mark.slow
def test_end_to_end_ml100k_beats_most_popular(tmp_path):
    if not (SHARED / "ml-100k" / "u.data").is_file():
        pytest.skip(f"real MovieLens-100K not found at {SHARED / 'ml-100k'}: end-to-end run skipped")
    torch.manual_seed(0)
    cfg = TrainConfig(data_dir=str(SHARED / "ml-100k"), output_dir=str(tmp_path), epochs=15, batch_size=32,
                      patience=100, progress=False, model=dict(max_seq_len=50))
    result = train(cfg, log=print)
    assert result["NDCG@10"] > result["popularity"]["NDCG@10"]
