"""MovieLens parsing, sequencing, leave-one-out split and download (no network: a fake opener serves zips)."""

import hashlib
import http.client
import io
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hstu import actions
from hstu.data import movielens
from hstu.data.movielens import (
    DownloadError,
    cache_dir,
    detect_format,
    load_movielens,
    read_ratings,
    read_titles,
    resolve_data_dir,
)
from hstu.data.sequences import (
    UserSequences,
    eval_windows,
    history_window,
    leave_one_out,
    seen_items,
    seen_mask,
    target_indices,
    train_item_counts,
    train_windows,
)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
ROWS = [(1, 10, 5, 100), (1, 20, 3, 50), (2, 10, 1, 70), (2, 30, 4, 70)]


def ml1m_text(rows):
    return "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows)


def ml100k_text(rows):
    return "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)


def write_ml1m(d: Path, rows, titles=None) -> Path:
    """ratings.dat (+ movies.dat from {raw id: title}, latin-1) in d."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "ratings.dat").write_text(ml1m_text(rows))
    if titles is not None:
        movies = "".join(f"{i}::{t}::Drama\n" for i, t in titles.items())
        (d / "movies.dat").write_bytes(movies.encode("latin-1"))
    return d


def write_ml100k(d: Path, rows, titles=None) -> Path:
    """u.data (+ u.item from {raw id: title}, latin-1) in d."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "u.data").write_text(ml100k_text(rows))
    if titles is not None:
        items = "".join(f"{i}|{t}|01-Jan-1995||http://x|0|1|0\n" for i, t in titles.items())
        (d / "u.item").write_bytes(items.encode("latin-1"))
    return d


def seqs_of(rows):
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    return UserSequences.from_ratings(df)


# --- parsing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, write", [("ml-1m", write_ml1m), ("ml-100k", write_ml100k)])
def test_read_ratings_both_formats(tmp_path, fmt, write):
    write(tmp_path, ROWS)
    assert detect_format(tmp_path) == fmt
    df = read_ratings(tmp_path / movielens.RATINGS_FILE[fmt], fmt)
    assert list(df.columns) == ["user", "item", "rating", "timestamp"]
    assert all(dt == np.int64 for dt in df.dtypes)
    assert [tuple(r) for r in df.itertuples(index=False)] == ROWS


def test_crlf_and_missing_final_newline(tmp_path):
    (tmp_path / "crlf.dat").write_bytes(ml1m_text(ROWS).replace("\n", "\r\n").encode())
    (tmp_path / "bare.dat").write_text(ml1m_text(ROWS).rstrip("\n"))
    for name in ("crlf.dat", "bare.dat"):
        df = read_ratings(tmp_path / name, "ml-1m")
        assert [tuple(r) for r in df.itertuples(index=False)] == ROWS


def test_detect_format_error_names_dir_and_files(tmp_path):
    with pytest.raises(ValueError) as err:
        detect_format(tmp_path)
    for part in (str(tmp_path), "ratings.dat", "u.data"):
        assert part in str(err.value)


BAD_LINES = [
    ("1::10::5", ("expected 4 fields", "got 3")),
    ("1::10::5::100::7", ("expected 4 fields", "got 5")),
    ("1::abc::5::100", ("item is not an integer", "'abc'")),
    ("1::10::3.5::100", ("rating is not an integer", "'3.5'")),
    ("1::10::0::100", ("rating 0 is outside 1..5",)),
    ("1::10::6::100", ("rating 6 is outside 1..5",)),
    ("1::10::5::-1", ("negative timestamp -1",)),
    ("", ("blank line",)),
    ("   ", ("blank line",)),
    ("1::10::5::99999999999999999999", ("out of range",)),
]


@pytest.mark.parametrize("bad, expected", BAD_LINES)
def test_malformed_line_names_file_and_line(tmp_path, bad, expected):
    text = ml1m_text(ROWS[:2]) + bad + "\n" + ml1m_text(ROWS[2:])
    (tmp_path / "ratings.dat").write_text(text)
    with pytest.raises(ValueError) as err:
        read_ratings(tmp_path / "ratings.dat", "ml-1m")
    msg = str(err.value)
    assert "ratings.dat line 3" in msg
    for part in expected:
        assert part in msg


def test_malformed_ml100k_and_first_error_wins(tmp_path):
    rows = ml100k_text(ROWS).splitlines()
    rows[1] = "1\tx\t3\t50"  # non-numeric before a wrong field count: the earlier line is reported
    rows[3] = "2\t30\t4"
    (tmp_path / "u.data").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"u\.data line 2: item is not an integer"):
        read_ratings(tmp_path / "u.data", "ml-100k")


def test_blank_trailing_lines_and_empty_file(tmp_path):
    (tmp_path / "ratings.dat").write_text(ml1m_text(ROWS) + "\n")
    with pytest.raises(ValueError, match=r"ratings\.dat line 5: blank line"):
        read_ratings(tmp_path / "ratings.dat", "ml-1m")
    for content in ("", "\n"):
        (tmp_path / "ratings.dat").write_text(content)
        with pytest.raises(ValueError, match=r"ratings\.dat: the file is empty"):
            read_ratings(tmp_path / "ratings.dat", "ml-1m")


def test_utf8_bom_is_accepted(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "ratings.dat").write_bytes(bom + ml1m_text(ROWS).encode())
    (tmp_path / "movies.dat").write_bytes(bom + "10::Café (1999)::Drama\n".encode("utf-8"))
    df = read_ratings(tmp_path / "ratings.dat", "ml-1m")
    assert [tuple(r) for r in df.itertuples(index=False)] == ROWS
    assert read_titles(tmp_path, "ml-1m") == {10: "Café (1999)"}


def test_cr_only_line_endings_are_named(tmp_path):
    (tmp_path / "ratings.dat").write_bytes(ml1m_text(ROWS).replace("\n", "\r").encode())
    with pytest.raises(ValueError, match="ratings.dat: CR-only line endings"):
        read_ratings(tmp_path / "ratings.dat", "ml-1m")


def test_a_binary_line_is_quoted_short(tmp_path):
    junk = bytes(range(128, 256)) * 50
    (tmp_path / "ratings.dat").write_bytes(ml1m_text(ROWS[:1]).encode() + b"1::" + junk + b"::5::100\n")
    with pytest.raises(ValueError, match="ratings.dat line 2: item is not an integer") as err:
        read_ratings(tmp_path / "ratings.dat", "ml-1m")
    assert len(str(err.value)) < 200
    (tmp_path / "movies.dat").write_bytes(b"10::A::Drama\n" + junk + b"\n")
    with pytest.raises(ValueError, match="movies.dat line 2") as err:
        read_titles(tmp_path, "ml-1m")
    assert len(str(err.value)) < 250


def test_titles_latin1(tmp_path):
    write_ml1m(tmp_path / "a", ROWS, {10: "Café (1999)", 20: "Zoë", 30: "X"})
    write_ml100k(tmp_path / "b", ROWS, {10: "Café (1999)", 20: "Zoë"})
    assert read_titles(tmp_path / "a", "ml-1m") == {10: "Café (1999)", 20: "Zoë", 30: "X"}
    assert read_titles(tmp_path / "b", "ml-100k") == {10: "Café (1999)", 20: "Zoë"}
    assert read_titles(tmp_path, "ml-1m") == {}


@pytest.mark.parametrize("line", ["10::Title", "x::Title::Drama", "", "10::Dup::Drama"])
def test_malformed_titles(tmp_path, line):
    (tmp_path / "movies.dat").write_text(f"10::A::Drama\n{line}\n30::C::Drama\n")
    with pytest.raises(ValueError, match=r"movies\.dat line 2"):
        read_titles(tmp_path, "ml-1m")


# --- sequences -------------------------------------------------------------------------------------------


def test_dense_ids_and_sequences():
    seqs, item_ids = seqs_of([(7, 50, 4, 3), (3, 1000, 1, 5), (7, 7, 3, 1), (3, 50, 5, 2)])
    np.testing.assert_array_equal(item_ids, [7, 50, 1000])
    np.testing.assert_array_equal(seqs.user_ids, [3, 7])
    np.testing.assert_array_equal(seqs.offsets, [0, 2, 4])
    np.testing.assert_array_equal(seqs.items, [2, 3, 1, 2])  # user 3: t=2, 5; user 7: t=1, 3
    np.testing.assert_array_equal(seqs.ratings, [5, 1, 3, 4])
    np.testing.assert_array_equal(seqs.timestamps, [2, 5, 1, 3])
    np.testing.assert_array_equal(
        seqs.actions(), [actions.POSITIVE, actions.NEGATIVE, actions.NEUTRAL, actions.POSITIVE]
    )
    np.testing.assert_array_equal(seqs.lengths(), [2, 2])
    assert len(seqs) == 2 and seqs.num_items == 3
    for a in (seqs.user_ids, seqs.offsets, seqs.items, seqs.ratings, seqs.timestamps, item_ids):
        assert a.dtype == np.int64


def test_stable_sort_keeps_file_order_on_ties(tmp_path):
    rows = [(1, 5, 3, 200), (1, 3, 3, 100), (2, 9, 3, 100), (1, 4, 3, 100), (1, 1, 3, 200), (1, 2, 3, 50)]
    rows += [(1, i, 3, 100) for i in (8, 6, 7)]
    write_ml1m(tmp_path, rows)
    data = load_movielens(tmp_path)
    s = data.sequences
    raw = data.item_ids[s.items[s.offsets[0] : s.offsets[1]] - 1]
    np.testing.assert_array_equal(raw, [2, 3, 4, 8, 6, 7, 5, 1])


def test_load_movielens_titles_and_fields(tmp_path):
    write_ml1m(tmp_path, ROWS, {10: "Café", 99: "unrated"})
    data = load_movielens(tmp_path)
    assert data.name == "ml-1m" and data.data_dir == tmp_path
    np.testing.assert_array_equal(data.item_ids, [10, 20, 30])
    assert data.titles == {1: "Café", 2: "item 20", 3: "item 30"}
    np.testing.assert_array_equal(data.user_ids, [1, 2])


# --- leave-one-out ---------------------------------------------------------------------------------------


def test_leave_one_out_targets_and_windows():
    rows = [(1, 1, 5, 0)]  # 1 event: dropped
    rows += [(2, 1, 5, 0), (2, 2, 5, 1)]  # 2 events: dropped
    rows += [(3, i, 4, t) for t, i in enumerate([3, 1, 2])]  # 3 events
    rows += [(4, i, 2, t) for t, i in enumerate([4, 3, 2, 1, 5])]  # 5 events
    seqs = leave_one_out(seqs_of(rows)[0])
    np.testing.assert_array_equal(seqs.user_ids, [3, 4])
    np.testing.assert_array_equal(seqs.offsets, [0, 3, 8])
    assert seqs.num_items == 5
    np.testing.assert_array_equal(seqs.items[seqs.offsets[:-1] + target_indices(seqs, "test")], [2, 5])
    np.testing.assert_array_equal(seqs.items[seqs.offsets[:-1] + target_indices(seqs, "valid")], [1, 1])
    np.testing.assert_array_equal(target_indices(seqs, "valid"), [1, 3])
    np.testing.assert_array_equal(target_indices(seqs, "test"), [2, 4])

    def windows(start, end):
        return [list(seqs.items[o + a : o + b]) for o, a, b in zip(seqs.offsets, start, end)]

    assert windows(*train_windows(seqs)) == [[3], [4, 3, 2]]
    start, end, target = eval_windows(seqs, "valid")
    assert windows(start, end) == [[3], [4, 3, 2]]
    np.testing.assert_array_equal(target, [1, 3])
    start, end, target = eval_windows(seqs, "test")
    assert windows(start, end) == [[3, 1], [4, 3, 2, 1]]
    np.testing.assert_array_equal(target, [2, 4])
    np.testing.assert_array_equal(train_item_counts(seqs), [0, 0, 1, 2, 1, 0])
    with pytest.raises(ValueError, match="leave_one_out"):
        train_windows(seqs_of(rows)[0])
    with pytest.raises(ValueError, match="split"):
        target_indices(seqs, "train")


def test_cap_at_max_seq_len_minus_one():
    rows = [(1, 1, 4, 0), (1, 2, 4, 1), (1, 3, 4, 2)]
    rows += [(9, i, 4, t) for t, i in enumerate(range(11, 1, -1))]  # 10 events, items 11..2
    seqs = leave_one_out(seqs_of(rows)[0])
    start, end = train_windows(seqs, max_seq_len=4)
    np.testing.assert_array_equal(start, [0, 5])
    np.testing.assert_array_equal(end, [1, 8])
    start, end, target = eval_windows(seqs, "valid", max_seq_len=4)
    np.testing.assert_array_equal(np.stack([start, end, target]), [[0, 5], [1, 8], [1, 8]])
    start, end, target = eval_windows(seqs, "test", max_seq_len=4)
    np.testing.assert_array_equal(np.stack([start, end, target]), [[0, 6], [2, 9], [2, 9]])
    o = seqs.offsets[1]
    assert list(seqs.items[o + start[1] : o + end[1]]) == [5, 4, 3] and seqs.items[o + target[1]] == 2
    assert history_window(2, 4) == (0, 2) and history_window(7, 4) == (4, 7)
    assert history_window(199 + 5) == (5, 204)  # default max_seq_len 200 keeps 199
    np.testing.assert_array_equal(history_window(np.array([0, 3, 9]), 4)[0], [0, 0, 6])
    # train counts are never capped
    assert train_item_counts(seqs).sum() == 1 + 8


def test_seen_items_and_mask():
    rows = [(1, i, 4, t) for t, i in enumerate([5, 3, 5, 1])] + [
        (2, i, 4, t) for t, i in enumerate([2, 4, 1])
    ]
    seqs = leave_one_out(seqs_of(rows)[0])
    test_target = target_indices(seqs, "test")
    np.testing.assert_array_equal(seen_items(seqs, 0, test_target[0]), [3, 5])
    np.testing.assert_array_equal(seen_items(seqs, 1, 2), [2, 4])
    mask = seen_mask(seqs, np.array([1, 0]), test_target[[1, 0]])
    assert mask.shape == (2, 6)
    np.testing.assert_array_equal(np.flatnonzero(mask[0]), [2, 4])
    np.testing.assert_array_equal(np.flatnonzero(mask[1]), [3, 5])
    assert not seen_mask(seqs, np.array([0]), np.array([0])).any()
    with pytest.raises(ValueError):
        seen_mask(seqs, np.array([1]), np.array([4]))


# --- location and download -------------------------------------------------------------------------------


def make_zip(top: str, files: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(f"{top}/{name}", text)
    return buf.getvalue()


def serving(data: bytes, calls: list):
    def opener(url):
        calls.append(url)
        return io.BytesIO(data)

    return opener


def no_opener(url):
    raise AssertionError(f"unexpected download of {url}")


def test_resolve_order_flag_env_cache(tmp_path, monkeypatch):
    flag, env = write_ml1m(tmp_path / "flag", ROWS), write_ml100k(tmp_path / "env", ROWS)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HSTU_DATA_DIR", str(env))
    assert resolve_data_dir(flag, opener=no_opener) == flag
    assert resolve_data_dir(None, opener=no_opener) == env
    monkeypatch.delenv("HSTU_DATA_DIR")
    cached = write_ml1m(tmp_path / "xdg" / "hstu" / "ml-1m", ROWS)
    assert resolve_data_dir(None, opener=no_opener) == cached
    with pytest.raises(ValueError, match="u.data"):
        resolve_data_dir(tmp_path / "empty", opener=no_opener)
    monkeypatch.setenv("HSTU_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="ratings.dat"):
        resolve_data_dir(None, opener=no_opener)


def test_cache_dir_default(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir("ml-100k") == tmp_path / ".cache" / "hstu" / "ml-100k"


def test_download_unpacks_into_cache(tmp_path, monkeypatch):
    data = make_zip(
        "ml-1m", {"ratings.dat": ml1m_text(ROWS), "movies.dat": "10::Ten::Drama\n", "README": "x"}
    )
    url = movielens.ARCHIVES["ml-1m"][0]
    monkeypatch.setitem(movielens.ARCHIVES, "ml-1m", (url, hashlib.md5(data).hexdigest()))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("HSTU_DATA_DIR", raising=False)
    calls = []
    monkeypatch.setattr(movielens, "urlopen", serving(data, calls))
    loaded = load_movielens()
    target = tmp_path / "hstu" / "ml-1m"
    assert calls == [url] and loaded.data_dir == target
    assert sorted(p.name for p in target.iterdir()) == ["README", "movies.dat", "ratings.dat"]
    assert loaded.titles[1] == "Ten" and len(loaded.sequences.items) == len(ROWS)
    load_movielens()  # cached now: no second download
    assert len(calls) == 1


def test_download_md5_mismatch(tmp_path, monkeypatch):
    data = make_zip("ml-100k", {"u.data": ml100k_text(ROWS)})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("HSTU_DATA_DIR", raising=False)
    with pytest.raises(ValueError) as err:
        resolve_data_dir(None, "ml-100k", opener=serving(data, []))
    msg = str(err.value)
    assert "md5" in msg and movielens.ARCHIVES["ml-100k"][1] in msg and hashlib.md5(data).hexdigest() in msg
    assert list((tmp_path / "hstu" / "ml-100k").iterdir()) == []


@pytest.mark.parametrize(
    "error", [urllib.error.URLError("Name or service not known"), http.client.IncompleteRead(b"")]
)
def test_download_network_failure(tmp_path, monkeypatch, error):
    def failing(url):
        raise error

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("HSTU_DATA_DIR", raising=False)
    with pytest.raises(DownloadError) as err:
        resolve_data_dir(None, "ml-1m", opener=failing)
    assert isinstance(err.value, ValueError) and err.value.__cause__ is None
    msg = str(err.value)
    cache = tmp_path / "hstu" / "ml-1m"
    for part in ("could not download", str(cache), "ratings.dat", "data_dir", "HSTU_DATA_DIR"):
        assert part in msg
    assert list(cache.iterdir()) == []


def test_download_bad_archive(tmp_path, monkeypatch):
    for data in (b"not a zip", make_zip("ml-1m", {"README": "no ratings"})):
        url = movielens.ARCHIVES["ml-1m"][0]
        monkeypatch.setitem(movielens.ARCHIVES, "ml-1m", (url, hashlib.md5(data).hexdigest()))
        with pytest.raises(ValueError, match="zip archive|holds no ratings.dat"):
            movielens.download("ml-1m", tmp_path / "d", opener=serving(data, []))
        assert list((tmp_path / "d").iterdir()) == []


# --- real data (from ../shared/data when present) --------------------------------------------------------


def shared(name: str) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real MovieLens data folder {SHARED_DATA} is absent")
    return SHARED_DATA / name


def check_real(data, users, items, events):
    s = data.sequences
    assert (len(s), s.num_items, len(s.items)) == (users, items, events)
    assert len(data.item_ids) == items == len(data.titles)
    assert s.items.min() == 1 and s.items.max() == items
    same_user = np.diff(np.repeat(np.arange(len(s)), s.lengths())) == 0
    assert (np.diff(s.timestamps)[same_user] >= 0).all()
    assert data.titles[1] == "Toy Story (1995)"
    # every user has >= 20 ratings in both datasets, so leave-one-out keeps them all
    assert len(leave_one_out(s)) == users


def test_real_ml100k():
    data = load_movielens(shared("ml-100k"))
    assert data.name == "ml-100k"
    check_real(data, users=943, items=1682, events=100_000)
    np.testing.assert_array_equal(data.user_ids, np.arange(1, 944))


def test_real_ml1m_half():
    data = load_movielens(shared("ml-1m-half"))
    assert data.name == "ml-1m"
    # users 1..2999 of MovieLens-1M rate 3,615 of its 3,706 rated movies
    check_real(data, users=2999, items=3615, events=487_650)
    np.testing.assert_array_equal(data.user_ids, np.arange(1, 3000))
