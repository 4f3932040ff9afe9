"""bench/compare_rectools.py: the exported split is our split, and the evaluation side scores top-K lists with our
metrics. The rectools side runs only where its environment (.venv-rectools) exists; CI does not create it."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench import compare_rectools
from bench.rectools_split import export_split, read_split
from bench.topk_metrics import MISSED, list_ranks, topk_metrics
from hstu.train import load_sequences

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv-rectools" / "bin" / "python"


def write_ml1m(folder: Path, users=12, items=25, seed=0) -> Path:
    """ML-1M-format ratings with many equal timestamps (as MovieLens has) and two users too short for the split."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for user in range(1, users + 1):
        n = 2 if user in (3, 7) else int(rng.integers(4, 20))
        times = 978300000 + np.sort(rng.integers(0, 6, n)) * 100
        for item, t in zip(rng.choice(items, n, replace=False), rng.permutation(times)):
            lines.append(f"{user}::{(item + 1) * 10}::{rng.integers(1, 6)}::{t}")
    rng.shuffle(lines)
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture()
def data_dir(tmp_path):
    return write_ml1m(tmp_path / "tiny-ml")


def test_split_export_is_our_split(data_dir, tmp_path):
    _, seqs = load_sequences(data_dir, "ml-1m")
    export_split(seqs, tmp_path / "split")
    frames = read_split(tmp_path / "split")
    assert 3 not in frames["test"]["user"].tolist() and 7 not in frames["test"]["user"].tolist()
    for name in ("valid", "test"):
        assert frames[name]["user"].tolist() == seqs.user_ids.tolist()
    train = frames["train"]
    # the other side orders by (timestamp, order): that must be our stable order, ties included
    train = train.sort_values(["user", "timestamp", "order"], kind="stable")
    for u, raw in enumerate(seqs.user_ids):
        events = seqs.items[seqs.offsets[u]:seqs.offsets[u + 1]]
        n = len(events)
        history = train.loc[train["user"] == raw, "item"].tolist()
        assert history == events[: n - 1].tolist()  # what our model sees before the test target
        assert frames["valid"]["item"].iloc[u] == events[n - 2] == history[-1]  # rectools' held-out last event
        assert frames["test"]["item"].iloc[u] == events[n - 1]
    assert len(frames["train"]) == int((seqs.lengths() - 1).sum())


def test_list_ranks_and_metrics():
    users = np.array([5, 6, 7])
    items = np.array([[3, 4, 1], [2, 1, -1], [9, 8, 7]])
    ranks = list_ranks(users, items, np.array([7, 5, 6]), np.array([7, 1, 4]))
    assert ranks.tolist() == [2, 2, MISSED]
    m = topk_metrics(users, items, np.array([5, 6]), np.array([3, 1]), ks=(1, 3))
    assert m["HR@1"] == 0.5 and m["HR@3"] == 1.0 and m["MRR"] == pytest.approx((1 + 1 / 2) / 2)
    with pytest.raises(ValueError, match="k = 200"):
        topk_metrics(users, items, users, np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="no top-K list"):
        list_ranks(users, items, np.array([8]), np.array([1]))


def test_evaluation_side_on_fake_lists(data_dir, tmp_path):
    _, seqs = load_sequences(data_dir, "ml-1m")
    work, out = tmp_path / "work", tmp_path / "results"
    export_split(seqs, work / "split")
    test = read_split(work / "split")["test"]
    k = 200
    # "oracle" puts every target first; "half" puts it 20th for the even users and leaves it out for the others
    oracle = np.full((len(test), k), -1)
    oracle[:, 0] = test["item"]
    half = np.full((len(test), k), -1)
    even = np.arange(len(test)) % 2 == 0
    half[even, 19] = test["item"][even]
    (work / "fits").mkdir()
    for name, items in (("oracle", oracle), ("half", half)):
        np.savez(work / "fits" / f"topk_{name}.npz", users=test["user"].to_numpy(), items=items)
    (work / "fits" / "fit_oracle.json").write_text(json.dumps({"fit_s": 1.5, "epochs": 3}))
    compare_rectools.main(["--data-dir", str(data_dir), "--work-dir", str(work), "--out-dir", str(out),
                           "--skip-fit"])
    result = json.loads((out / "compare_rectools_tiny-ml.json").read_text())
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"rectools oracle", "rectools half", "most popular"}
    assert rows["rectools oracle"]["HR@10"] == 1.0 and rows["rectools oracle"]["MRR"] == 1.0
    assert rows["rectools oracle"]["epochs"] == 3
    share = even.mean()
    assert rows["rectools half"]["HR@10"] == 0 and rows["rectools half"]["HR@50"] == pytest.approx(share)
    assert rows["rectools half"]["NDCG@50"] == pytest.approx(share / np.log2(21))
    assert rows["most popular"]["users"] == len(seqs)
    md = (out / "compare_rectools_tiny-ml.md").read_text()
    assert "| rectools oracle | 1.0000 |" in md and "| most popular |" in md


@pytest.mark.skipif(not VENV_PYTHON.is_file(), reason="no .venv-rectools (see bench/requirements-rectools.txt)")
def test_rectools_side_writes_lists(data_dir, tmp_path):
    _, seqs = load_sequences(data_dir, "ml-1m")
    export_split(seqs, tmp_path / "split")
    subprocess.run([str(VENV_PYTHON), str(ROOT / "bench" / "rectools_fit.py"), "--split-dir", str(tmp_path / "split"),
                    "--out-dir", str(tmp_path / "fits"), "--models", "sasrec", "--max-epochs", "1", "--k", "5"],
                   check=True, capture_output=True, timeout=300)
    lists = np.load(tmp_path / "fits" / "topk_sasrec.npz")
    assert lists["users"].tolist() == seqs.user_ids.tolist() and lists["items"].shape == (len(seqs), 5)
    info = json.loads((tmp_path / "fits" / "fit_sasrec.json").read_text())
    assert info["epochs"] == 1


def test_our_checkpoint_row_is_hstu_eval(data_dir, tmp_path):
    from hstu.evaluate import evaluate_model
    from hstu.serving import load_for_inference
    from hstu.train import TrainConfig, train

    out = tmp_path / "run"
    train(TrainConfig(data_dir=str(data_dir), output_dir=str(out), epochs=1, batch_size=4, progress=False,
                      model=dict(dim=8, num_layers=1, max_seq_len=16, num_negatives=4, dropout=0.0)), log=lambda _: None)
    result = compare_rectools.main(["--data-dir", str(data_dir), "--work-dir", str(tmp_path / "work"), "--out-dir",
                                    str(tmp_path / "results"), "--skip-fit", "--our-checkpoint", str(out / "best.pt")])
    ours = next(r for r in result["rows"] if r["model"] == "ours (hstu)")
    model, _, seqs, dev = load_for_inference(out / "best.pt", str(data_dir), "ml-1m", "cpu")
    expected = evaluate_model(model, seqs, "test", device=dev)
    assert {k: ours[k] for k in compare_rectools.METRICS} == {k: expected[k] for k in compare_rectools.METRICS}
    assert ours["epochs"] == 1
    # ours minus most popular on the same users: the mean is the difference of the table's rows
    (pop_diff,) = result["paired"]
    pop = next(r for r in result["rows"] if r["model"] == "most popular")
    assert pop_diff["model"] == "most popular" and "ranks" not in pop
    for m in compare_rectools.PAIRED:
        d = pop_diff[m]
        assert d["mean"] == pytest.approx(ours[m] - pop[m]) and d["low"] <= d["mean"] <= d["high"]


def test_paired_difference_of_per_user_metrics():
    from bench.topk_metrics import paired_difference, per_user

    a, b = np.array([0, 3, 20, 0]), np.array([1, 3, 15, 50])
    assert per_user(a, "HR@10").tolist() == [1, 1, 0, 1]
    np.testing.assert_allclose(per_user(a, "NDCG@10"), [1, 1 / np.log2(5), 0, 1])
    mean, low, high = paired_difference(a, b, "HR@10", resamples=500)
    assert mean == pytest.approx(0.25) and low <= mean <= high and low >= -1 and high <= 1
    assert paired_difference(a, a, "NDCG@10") == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="HR@k or NDCG@k"):
        per_user(a, "MRR")
