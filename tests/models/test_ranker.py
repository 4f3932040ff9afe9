"""``hstu.serving.Ranker``: exact and FAISS retrieval agree, ranking equals a brute-force full forward, the blend,
seen-item exclusion, argument errors, and ``hstu recommend``."""

import re

import pytest
import torch
from test_train import write_synthetic_ml1m

from hstu import serving
from hstu.serving import retrieval_index
from hstu.actions import UNKNOWN
from hstu.checkpoint import save_checkpoint
from hstu.cli import main
from hstu.data import load_movielens
from hstu.model import HSTURecommender, ModelConfig
from hstu.serving import Ranker, recommend

N = 10  # max_seq_len: histories keep their last 9 events
LENGTHS = [4, 0, 15, 1, 9]  # a cold-start user, one history longer than N - 1
COLD = 1


def make_model(num_items=60, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    # time_query "self": the brute force below calls the encoder with each event's own time as its query time
    # (the "next" default's serving times are tests/models/test_time_query.py's)
    model = HSTURecommender(ModelConfig(num_items=num_items, dim=16, num_layers=2, num_heads=2, max_seq_len=N,
                                        dropout=0.0, time_query="self"))
    with torch.no_grad():  # the bias tables start at zero: give them values so that they matter
        for block in model.encoder.blocks:
            block.bias.pos_weight.normal_()
            block.bias.time_weight.normal_()
    return model.to(dtype).eval()


def histories(num_items=60, lengths=LENGTHS, seed=1):
    """Jagged histories (items may repeat) with rising timestamps."""
    g = torch.Generator().manual_seed(seed)
    L = sum(lengths)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths).cumsum(0)
    items = torch.randint(1, num_items + 1, (L,), generator=g)
    actions = torch.randint(2, 5, (L,), generator=g)
    stamps = torch.cat([torch.randint(0, 1000, (n,), generator=g).sort().values + 10_000 * b
                        for b, n in enumerate(lengths)])
    return items, actions, offsets, stamps


def user_events(h, b):
    items, actions, offsets, stamps = h
    lo, hi = int(offsets[b]), int(offsets[b + 1])
    return items[lo:hi], actions[lo:hi], stamps[lo:hi]


def reference(model, h, b, cands):
    """Brute force for user ``b`` and candidate items ``cands``: the full encoder forward on the last N - 1
    history events followed by the candidates as targets -> (ratings, retrieval logits of the candidates,
    retrieval logits of every item)."""
    items, actions, stamps = (t[-(N - 1):] for t in user_events(h, b))
    m, c = len(items), len(cands)
    request = stamps[-1] if m else torch.tensor(0)
    with torch.no_grad():
        out = model.encoder(torch.cat([items, cands]), torch.cat([actions, torch.full_like(cands, UNKNOWN)]),
                            torch.tensor([0, m + c]), torch.cat([stamps, request.expand(c)]),
                            num_targets=torch.tensor([c]))
        user = out[m - 1] if m else torch.zeros(out.shape[1], dtype=out.dtype)
        every = model.retrieval_logits(user)
    return model.predict_ratings(out[m:]), every[cands], every


def blend(retrieval, ratings, w, temperature=0.05):
    return (1 - w) * retrieval * temperature + w * (ratings.clamp(1, 5) - 1) / 4


@pytest.mark.parametrize("w", [0.5, 0.0, 1.0])
def test_ranking_matches_brute_force(w):
    model, h = make_model(), histories()
    K = 12
    full = Ranker(model, index="exact", retrieve_k=K, microbatch_size=5, rating_weight=w).rank(*h, k=None)
    top = Ranker(model, index="exact", retrieve_k=K, microbatch_size=None, rating_weight=w).rank(*h, k=4)
    assert len(full) == len(LENGTHS) and full.offsets.tolist() == [K * b for b in range(len(LENGTHS) + 1)]
    for b in range(len(LENGTHS)):
        got = full.user(b)
        seen = set(user_events(h, b)[0].tolist())
        assert 0 not in got["item"].tolist() and not seen & set(got["item"].tolist())
        ratings, retrieval, every = reference(model, h, b, got["item"])
        torch.testing.assert_close(got["rating"], ratings, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got["retrieval"], retrieval, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got["final"], blend(retrieval, ratings, w), rtol=1e-9, atol=1e-9)
        if b == COLD:  # a zero user vector: every retrieval score is 0, any unseen items will do
            assert torch.all(got["retrieval"] == 0)
        else:  # the candidates are the K best unseen items by retrieval
            every[0] = float("-inf")
            every[sorted(seen)] = float("-inf")
            assert set(got["item"].tolist()) == set(every.topk(K).indices.tolist())
        # sorted by the blend; w = 0: retrieval order, w = 1: rating order
        assert torch.all(got["final"][:-1] >= got["final"][1:])
        if w == 0 and b != COLD:
            assert torch.all(got["retrieval"][:-1] > got["retrieval"][1:])
        if w == 1:
            clamped = got["rating"].clamp(1, 5)
            assert torch.all(clamped[:-1] >= clamped[1:])
        # the top 4 are the first 4 of the whole ranking, whatever the microbatching
        first = top.user(b)
        assert first["item"].tolist() == got["item"][:4].tolist()
        torch.testing.assert_close(first["final"], got["final"][:4], rtol=1e-9, atol=1e-9)


def test_blend_formula():
    ranker = Ranker(make_model(), index="exact", rating_weight=0.5)
    # cosine 1, -1, 0 (logit * temperature 0.05) and ratings 6 (clamped to 5), 0 (clamped to 1), 3
    got = ranker.blend(torch.tensor([20.0, -20.0, 0.0]), torch.tensor([6.0, 0.0, 3.0]))
    torch.testing.assert_close(got, torch.tensor([1.0, -0.5, 0.25]))


def test_seen_items_and_small_catalogues():
    model = make_model(num_items=12)
    h = histories(num_items=12, lengths=[11, 3, 0])
    # more candidates asked for than items: every unseen item, once
    ranking = Ranker(model, index="exact", retrieve_k=50).rank(*h, k=None)
    for b in range(3):
        seen = set(user_events(h, b)[0].tolist())  # user 0's history is cut to 9 events; all 11 stay seen
        assert sorted(ranking.user(b)["item"].tolist()) == sorted(set(range(1, 13)) - seen)
    # keep_seen: the whole catalogue but item 0
    ranking = Ranker(model, index="exact", retrieve_k=50).rank(*h, k=None, exclude_seen=False)
    assert all(sorted(ranking.user(b)["item"].tolist()) == list(range(1, 13)) for b in range(3))
    # explicit seen lists replace the histories
    seen_items, seen_offsets = torch.tensor([1, 2, 3, 12]), torch.tensor([0, 4, 4, 4])
    ranking = Ranker(model, index="exact", retrieve_k=50).rank(*h, k=None, seen_items=seen_items,
                                                                 seen_offsets=seen_offsets)
    assert sorted(ranking.user(0)["item"].tolist()) == list(range(4, 12))
    assert sorted(ranking.user(1)["item"].tolist()) == list(range(1, 13))
    # no users at all
    empty = Ranker(model, index="exact").rank(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                                              torch.zeros(1, dtype=torch.long))
    assert len(empty) == 0 and empty.items.numel() == 0


def test_exact_retrieval_in_user_chunks(monkeypatch):
    model = make_model(num_items=40)
    h = histories(num_items=40)
    want = Ranker(model, index="exact", retrieve_k=8).rank(*h, k=None)
    monkeypatch.setattr(retrieval_index, "_EXACT_CHUNK_ELEMENTS", 90)  # two users per chunk
    got = Ranker(model, index="exact", retrieve_k=8).rank(*h, k=None)
    assert got.items.tolist() == want.items.tolist() and got.offsets.tolist() == want.offsets.tolist()


def test_faiss_and_exact_retrieval_agree():
    pytest.importorskip("faiss")
    model = make_model(num_items=300, dtype=torch.float32)
    exact = Ranker(model, index="exact", retrieve_k=40)
    flat = Ranker(model, index="faiss", retrieve_k=40)
    assert Ranker(model).index == "faiss"  # auto on the CPU with FAISS installed
    g = torch.Generator().manual_seed(0)
    users = torch.randn(30, 16, generator=g)
    counts = torch.randint(0, 30, (30,), generator=g)
    counts[3] = 280  # a user with fewer than 40 unseen items left
    seen_offsets = torch.zeros(31, dtype=torch.int64)
    seen_offsets[1:] = counts.cumsum(0)
    seen_items = torch.cat([torch.randperm(300, generator=g)[:n] + 1 for n in counts.tolist()])
    seen_items[:5] = seen_items[0]  # duplicates are fine
    for seen in ((None, None), (seen_items, seen_offsets)):
        want_items, want_scores, want_offsets = exact.retrieve(users, None, *seen)
        got_items, got_scores, got_offsets = flat.retrieve(users, None, *seen)
        assert got_offsets.tolist() == want_offsets.tolist()
        assert got_items.tolist() == want_items.tolist()
        torch.testing.assert_close(got_scores, want_scores, rtol=0, atol=1e-5)
        assert 0 not in got_items.tolist()
    assert (want_offsets[4] - want_offsets[3]).item() == 20
    for b in range(30):
        lo, hi = seen_offsets[b:b + 2].tolist()
        assert not set(seen_items[lo:hi].tolist()) & set(got_items[want_offsets[b]:want_offsets[b + 1]].tolist())
    # and through rank(): the same items, ratings and order (the cold-start user's ties aside)
    h = histories(num_items=300)
    want, got = exact.rank(*h, k=10), flat.rank(*h, k=10)
    for b in range(len(LENGTHS)):
        if b != COLD:
            assert got.user(b)["item"].tolist() == want.user(b)["item"].tolist()
            torch.testing.assert_close(got.user(b)["final"], want.user(b)["final"])


def test_argument_errors(monkeypatch):
    model = make_model()
    for kwargs, match in [
        ({"index": "annoy"}, "index must be one of auto, exact, faiss"),
        ({"retrieve_k": 0}, "retrieve_k must be an int >= 1"),
        ({"retrieve_k": 2.5}, "retrieve_k must be an int >= 1"),
        ({"rating_weight": 1.5}, "rating_weight must be a number in \\[0, 1\\]"),
        ({"rating_weight": -0.1}, "rating_weight must be a number in \\[0, 1\\]"),
        ({"microbatch_size": 0}, "microbatch_size must be a positive int"),
    ]:
        with pytest.raises(ValueError, match=match):
            Ranker(model, **kwargs)
    ranker = Ranker(model, index="exact", retrieve_k=5)
    h = histories()
    with pytest.raises(ValueError, match="k = 6 is more than retrieve_k = 5"):
        ranker.rank(*h, k=6)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        ranker.rank(*h, k=0)
    with pytest.raises(ValueError, match="seq_offsets must rise from 0 to 29"):
        ranker.rank(h[0], h[1], torch.tensor([0, 5, 28]), h[3])
    with pytest.raises(ValueError, match="seen_items and seen_offsets go together"):
        ranker.rank(*h, seen_items=h[0])
    monkeypatch.setattr(serving.ranker, "faiss_available", lambda: False)
    with pytest.raises(ValueError, match="pip install faiss-cpu"):
        Ranker(model, index="faiss")
    assert Ranker(model).index == "exact"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained small model saved as a checkpoint of generated MovieLens-1M files (no training needed)."""
    root = tmp_path_factory.mktemp("ranker")
    folder = write_synthetic_ml1m(root / "data", users=12, items=30, length=12)
    data = load_movielens(folder)
    model = make_model(num_items=data.num_items, dtype=torch.float32)
    path = root / "best.pt"
    save_checkpoint(path, {"model_config": model.config_dict(), "model": model.state_dict(),
                           "item_ids": data.item_ids.tolist(), "data_dir": str(folder.resolve()), "dataset": "ml-1m"})
    return {"path": str(path), "data": data, "model": model}


ROW = re.compile(r"^\s*(\d+)\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)\s+(Movie \d+ \(1999\))$")


def test_cli_recommend_prints_the_ranking(checkpoint, capsys):
    args = ["recommend", "--checkpoint", checkpoint["path"], "--user", "3", "-k", "6", "--index", "exact",
            "--retrieve-k", "15", "--blend-weight", "0.3"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(line for line in out if "title" in line)
    assert all(word in header for word in ("rank", "retrieval", "rating", "final"))
    rows = [ROW.match(line) for line in out if "Movie " in line]
    assert len(rows) == 6 and all(rows)
    ranks = [int(r[1]) for r in rows]
    retrieval, rating, final = ([float(r[i]) for r in rows] for i in (2, 3, 4))
    assert ranks == list(range(1, 7))
    assert final == sorted(final, reverse=True)
    for s, r, f in zip(retrieval, rating, final):
        assert f == pytest.approx(0.7 * s * 0.05 + 0.3 * (min(max(r, 1), 5) - 1) / 4, abs=2e-3)
    # the same as the library call, and never an item the user rated
    data = checkpoint["data"]
    want = recommend(checkpoint["model"], data, 3, 6, index="exact", retrieve_k=15, rating_weight=0.3)
    assert [r[5] for r in rows] == [row["title"] for row in want]
    assert set(want[0]) == {"item", "title", "score", "rating", "final"}
    seqs = data.sequences
    pos = list(seqs.user_ids).index(3)
    rated = {data.titles[int(i)] for i in seqs.items[seqs.offsets[pos]:seqs.offsets[pos + 1]]}
    assert not rated & {r[5] for r in rows}
    if serving.faiss_available():
        assert main([("faiss" if a == "exact" else a) for a in args]) == 0
        assert [m[5] for m in map(ROW.match, capsys.readouterr().out.splitlines()) if m] == [r[5] for r in rows]


def test_cli_recommend_errors(checkpoint, capsys):
    base = ["recommend", "--checkpoint", checkpoint["path"]]
    assert main([*base, "--user", "999"]) == 2
    assert "argument --user: no such user 999" in capsys.readouterr().err
    assert main([*base, "--user", "3", "-k", "20", "--retrieve-k", "10"]) == 2
    assert "argument -k: 20 is more than --retrieve-k 10" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--user", "3", "--blend-weight", "2"])
    assert "argument --blend-weight: must be a finite number in [0, 1]" in capsys.readouterr().err


def test_ranker_refuses_non_finite_scores(checkpoint):
    model = make_model()
    with torch.no_grad():
        model.rating_head[-1].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite candidate scores"):
        Ranker(model, index="exact").rank(*histories())
    with torch.no_grad():
        model.encoder.blocks[0].bias.pos_weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite user vectors"):
        Ranker(model, index="exact").rank(*histories())
