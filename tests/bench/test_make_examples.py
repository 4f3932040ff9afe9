"""bench/make_examples.py on a tiny trained run: each user's last ratings, our top items (none already rated)
and rectools' column from a fits folder in bench/rectools_fit.py's format."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "models"))

from test_train import write_synthetic_ml1m

from bench import make_examples
from hstu.train import load_sequences

ITEMS, LENGTH = 30, 10  # each user rated 10 of the 30 items: 20 are left to recommend
TINY_MODEL = dict(dim=8, num_layers=1, max_seq_len=8, num_negatives=4, dropout=0.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from hstu.train import TrainConfig, train

    root = tmp_path_factory.mktemp("examples")
    data = write_synthetic_ml1m(root / "data", users=12, items=ITEMS, length=LENGTH)
    out = root / "run"
    train(TrainConfig(data_dir=str(data), output_dir=str(out), epochs=1, batch_size=4, patience=100,
                      progress=False, model=TINY_MODEL),
          log=lambda *_: None)
    loaded, seqs = load_sequences(data, "ml-1m")
    return {"data": data, "checkpoint": out / "best.pt", "loaded": loaded, "seqs": seqs}


def sections(text):
    """``{user id: [table, ...]}``, each table a list of rows of cell strings (header and rule left out)."""
    out = {}
    for part in text.split("\n## User ")[1:]:
        head, _, body = part.partition("\n")
        tables, current = [], None
        for line in body.splitlines():
            if line.startswith("|"):
                if current is None:
                    current = []
                    tables.append(current)
                current.append([c.strip() for c in line.strip()[1:-1].split("|")])
            else:
                current = None
        out[int(head)] = [t[2:] for t in tables]
    return out


def rated_titles(run, user):
    seqs, data = run["loaded"].sequences, run["loaded"]
    pos = int(np.searchsorted(seqs.user_ids, user))
    return [data.titles[int(i)] for i in seqs.items[seqs.offsets[pos]:seqs.offsets[pos + 1]]]


def test_examples_show_history_and_unrated_recommendations(run, tmp_path):
    out = tmp_path / "examples.md"
    text = make_examples.main(["--checkpoint", str(run["checkpoint"]), "--data-dir", str(run["data"]),
                               "--out", str(out)])
    assert out.read_text() == text
    # the command to regenerate
    assert "--users 1,2,3" in text and f"--checkpoint {run['checkpoint']}" in text
    assert "rectools' HSTU column: not included" in text and "--rectools-fits" in text
    users = sections(text)
    assert list(users) == [1, 2, 3]  # the first three by id
    for user, (history, top) in users.items():
        rated = rated_titles(run, user)
        assert [row[3] for row in history] == rated[-10:]  # oldest first
        assert all(row[2] in {"1", "2", "3", "4", "5"} and row[1][:4] in ("2000", "2001") for row in history)
        assert len(top) == 10 and [row[0] for row in top] == [str(i) for i in range(1, 11)]
        titles = [row[1] for row in top]
        assert len(set(titles)) == 10 and not set(titles) & set(rated)
        finals = [float(row[4]) for row in top]
        assert finals == sorted(finals, reverse=True)  # the Ranker's blend order


def test_examples_match_hstu_recommend(run, tmp_path):
    from hstu.serving import Ranker, load_for_inference, recommend

    text = make_examples.main(["--checkpoint", str(run["checkpoint"]), "--users", "5",
                               "--out", str(tmp_path / "x.md")])
    model, data, _, _ = load_for_inference(run["checkpoint"], None, device="cpu")
    expected = recommend(model, data, 5, 10, ranker=Ranker(model, index="exact"))
    top = sections(text)[5][1]
    assert [row[1] for row in top] == [r["title"] for r in expected]
    assert [row[2] for row in top] == [f"{r['score']:.3f}" for r in expected]


def test_a_small_catalogue_gives_fewer_rows(run, tmp_path):
    text = make_examples.main(["--checkpoint", str(run["checkpoint"]), "--users", "2", "-k", "25",
                               "--out", str(tmp_path / "x.md")])
    top = sections(text)[2][1]
    assert len(top) == ITEMS - LENGTH and f"only {ITEMS - LENGTH} unrated items left" in text


def write_fits(folder, seqs, k=12):
    """topk_hstu.npz and fit_hstu.json as bench/rectools_fit.py writes them: raw user ids, dense item ids, -1
    past a shorter list, no item of the user's train events (all but the last). User 1's list starts with its
    held-out last item; user 2's holds 3 items only."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    rows = []
    for u in range(len(seqs)):
        events = seqs.items[seqs.offsets[u]:seqs.offsets[u + 1]]
        unseen = np.setdiff1d(np.arange(1, seqs.num_items + 1), events)
        top = rng.choice(unseen, k, replace=False)
        rows.append(np.concatenate([[events[-1]], top[:k - 1]]) if u == 0 else top)
    items = np.stack(rows).astype(np.int64)
    items[1, 3:] = -1
    np.savez(folder / "topk_hstu.npz", users=seqs.user_ids, items=items)
    (folder / "fit_hstu.json").write_text(json.dumps({"model": "hstu", "fit_s": 1.0, "epochs": 3}))
    return items


def test_rectools_column_from_a_fits_folder(run, tmp_path):
    seqs, data = run["seqs"], run["loaded"]
    fits = tmp_path / "work" / "fits"
    items = write_fits(fits, seqs)
    text = make_examples.main(["--checkpoint", str(run["checkpoint"]), "--users", "1,2", "--rectools-fits",
                               str(fits), "--out", str(tmp_path / "x.md")])
    assert "rectools hstu: the top 10" in text and "3 epochs" in text and "--rectools-fits" in text
    users = sections(text)
    mark = make_examples.HELD_OUT_MARK
    top1 = users[1][1]
    assert [row[5] for row in top1] == [data.titles[int(i)] + (f" {mark}" if j == 0 else "")
                                        for j, i in enumerate(items[0, :10])]
    assert rated_titles(run, 1)[-1] == top1[0][5].removesuffix(f" {mark}")
    top2 = users[2][1]
    assert len(top2) == 10 and [row[5] for row in top2[:3]] == [data.titles[int(i)] for i in items[1, :3]]
    assert all(row[5] == "" for row in top2[3:])
    assert text.count(f"{mark}:") == 1  # the note under user 1 only


def test_errors(run, tmp_path):
    base = ["--checkpoint", str(run["checkpoint"]), "--out", str(tmp_path / "x.md")]
    with pytest.raises(SystemExit, match="no user 999"):
        make_examples.main([*base, "--users", "1,999"])
    fits = tmp_path / "fits"
    fits.mkdir()
    np.savez(fits / "topk_hstu.npz", users=run["seqs"].user_ids,
             items=np.full((len(run["seqs"]), 3), ITEMS + 5, dtype=np.int64))
    with pytest.raises(ValueError, match="past the"):
        make_examples.main([*base, "--rectools-fits", str(fits)])
    with pytest.raises(FileNotFoundError, match="lists there: hstu"):
        make_examples.main([*base, "--rectools-fits", str(fits), "--rectools-model", "sasrec"])
    with pytest.raises(SystemExit):
        make_examples.parse_args([*base, "--users", "a,b"])
