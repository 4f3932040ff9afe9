"""bench/plots.py on a tiny trained run: the bias, training and comparison PNGs, and the time-bucket
labels."""

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "models"))

from test_train import write_synthetic_ml1m

from bench import plots
from hstu.bias import TIME_BUCKETS

TINY_MODEL = dict(dim=8, num_layers=2, max_seq_len=8, num_negatives=4, dropout=0.0, time_buckets="fine")


def is_png(path: Path) -> bool:
    magic = plots.PNG_MAGIC
    return path.is_file() and path.stat().st_size > len(magic) and path.read_bytes()[:len(magic)] == magic


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from hstu.train import TrainConfig, train

    root = tmp_path_factory.mktemp("plots")
    data = write_synthetic_ml1m(root / "data", users=12, length=10)
    out = root / "tiny-run"
    train(TrainConfig(data_dir=str(data), output_dir=str(out), epochs=2, batch_size=4, patience=100,
                      progress=False, model=TINY_MODEL), log=lambda *_: None)
    return out


def test_time_bucket_labels():
    assert plots.time_bucket_labels(TIME_BUCKETS["coarse"]) == ["<1h", "1h-1d", "1d-1w", "1w-30d", ">=30d"]
    fine = plots.time_bucket_labels(TIME_BUCKETS["fine"])
    assert len(fine) == len(TIME_BUCKETS["fine"]) + 1
    assert fine[:3] == ["<1s", "1s-5s", "5s-15s"] and fine[4:6] == ["30s-1min", "1min-2min"]
    assert fine[-4:] == ["1w-30d", "30d-90d", "90d-1y", ">=1y"]
    assert plots.time_bucket_labels([90, 1000000]) == ["<90s", "90s-1.65w", ">=1.65w"]
    assert plots.time_bucket_labels([]) == ["all"]


def test_plot_run_writes_the_three_pngs(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    written = plots.plot_run(run_dir, tmp_path, "t")
    assert [p.name for p in written] == ["time_bias_t.png", "position_bias_t.png", "training_t.png"]
    assert all(is_png(p) for p in written)


def test_bias_tables_match_the_checkpoint(run_dir):
    pos, time, boundaries, n = plots.bias_tables(run_dir / "best.pt")
    assert len(pos) == len(time) == TINY_MODEL["num_layers"] and n == TINY_MODEL["max_seq_len"]
    assert boundaries == list(TIME_BUCKETS["fine"])
    assert pos[0].shape == (1, 2 * n - 1) and time[0].shape == (1, len(boundaries) + 1)
    # trained, the tables have left their zero start
    assert any(float(t.abs().max()) > 0 for t in time)


def test_training_plot_of_one_epoch(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    one = tmp_path / "one-epoch"
    one.mkdir()
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    first = next(x for x in lines if '"epoch"' in x and '"event"' not in x)
    (one / "log.jsonl").write_text(first + "\n")  # no checkpoint, no final record
    records, best = plots.read_log(one / "log.jsonl")
    assert [r["epoch"] for r in records] == [1] and best == 1
    written = plots.plot_run(one, tmp_path / "out", "one")
    assert [p.name for p in written] == ["training_one.png"] and is_png(written[0])


def test_read_log_takes_the_final_best_epoch_and_the_last_copy_of_an_epoch(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [{"event": "start"}, {"epoch": 1, "loss": 3.0, "valid_NDCG@10": 0.1},
               {"epoch": 2, "loss": 2.0, "valid_NDCG@10": 0.3}, {"event": "resume", "after_epoch": 1},
               {"epoch": 2, "loss": 1.5, "valid_NDCG@10": 0.2}, {"best_epoch": 1, "test_NDCG@10": 0.1}]
    log.write_text("\n".join(map(json.dumps, records)) + '\n{"epoch": 3, "lo')
    got, best = plots.read_log(log)
    assert [r["loss"] for r in got] == [3.0, 1.5] and best == 1


def test_comparison_and_main(run_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    compare = ROOT / "bench" / "results" / "compare_rectools_ml-100k.json"
    assert plots.main(["--run", str(run_dir), "--compare", str(compare), "--out-dir", str(tmp_path)]) == 0
    names = {"time_bias_tiny-run.png", "position_bias_tiny-run.png", "training_tiny-run.png",
             "comparison_tiny-run.png"}
    assert {p.name for p in tmp_path.iterdir()} == names
    assert all(is_png(tmp_path / n) for n in names)
    out = capsys.readouterr().out
    assert all(n in out for n in names)


def test_without_matplotlib_main_says_so_and_exits_0(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plots, "pyplot", lambda: print("matplotlib is not installed: no plot") or None)
    assert plots.main(["--run", str(run_dir), "--out-dir", str(tmp_path / "none")]) == 0
    assert "not installed" in capsys.readouterr().out and not (tmp_path / "none").exists()


def test_last_pt_is_used_without_best_pt(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    copy = tmp_path / "only-last"
    copy.mkdir()
    shutil.copy(run_dir / "last.pt", copy / "last.pt")
    written = plots.plot_run(copy, tmp_path / "out", "x")
    assert [p.name for p in written] == ["time_bias_x.png", "position_bias_x.png"]
