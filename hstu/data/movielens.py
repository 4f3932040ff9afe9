"""MovieLens-1M and MovieLens-100K: find or download the files, parse them strictly, build sequences."""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import os
import reprlib
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hstu.data.sequences import UserSequences

RATINGS_FILE = {"ml-1m": "ratings.dat", "ml-100k": "u.data"}
MOVIES_FILE = {"ml-1m": "movies.dat", "ml-100k": "u.item"}
SEPARATOR = {"ml-1m": "::", "ml-100k": "\t"}
TITLE_SEPARATOR = {"ml-1m": "::", "ml-100k": "|"}
ARCHIVES = {
    "ml-1m": ("https://files.grouplens.org/datasets/movielens/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906"),
    "ml-100k": (
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "0e33842e24a9c977be4e0107933c0723",
    ),
}
FIELDS = ("user", "item", "rating", "timestamp")
DOWNLOAD_TIMEOUT_S = 60
UTF8_BOM = b"\xef\xbb\xbf"
# error messages quote a bad field or line at most this long (a binary file has lines of any length)
_QUOTE = reprlib.Repr()
_QUOTE.maxstring = 80


class DownloadError(ValueError):
    """The dataset could not be downloaded (no network, HTTP error, truncated transfer)."""


def detect_format(data_dir: str | os.PathLike) -> str:
    """ "ml-1m" if data_dir holds ratings.dat, else "ml-100k" if it holds u.data; ValueError otherwise."""
    data_dir = Path(data_dir)
    for fmt, name in RATINGS_FILE.items():
        if (data_dir / name).is_file():
            return fmt
    raise ValueError(
        f"no MovieLens ratings file in {data_dir}: expected ratings.dat (+ movies.dat) for MovieLens-1M "
        f"or u.data (+ u.item) for MovieLens-100K"
    )


def _read_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    if raw.startswith(UTF8_BOM):
        # a BOM says the file is UTF-8; latin-1 would keep it as three characters glued to the first field
        raw = raw[len(UTF8_BOM):]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    else:
        # latin-1 decodes any byte, so odd bytes surface as field errors with a line number, not UnicodeError.
        text = raw.decode("latin-1")
    text = text.replace("\r\n", "\n")
    if "\r" in text and "\n" not in text:
        raise ValueError(f"{path.name}: CR-only line endings (classic Mac OS); convert them to \\n or \\r\\n")
    text = text.removesuffix("\n")
    if not text:
        raise ValueError(f"{path.name}: the file is empty")
    return text.split("\n")


def _parse_int(field: str, name: str, where: str) -> int:
    try:
        value = int(field)
    except ValueError:
        raise ValueError(f"{where}: {name} is not an integer: {_QUOTE.repr(field)}") from None
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{where}: {name} is out of range: {_QUOTE.repr(field)}")
    return value


def _parse_slow(lines: list[str], sep: str, file_name: str) -> np.ndarray:
    """Parse line by line, raising a ValueError at the first malformed line. int64 [lines, 4]."""
    rows = []
    for number, line in enumerate(lines, 1):
        where = f"{file_name} line {number}"
        if not line.strip():
            raise ValueError(f"{where}: blank line (expected {len(FIELDS)} fields)")
        fields = line.split(sep)
        if len(fields) != len(FIELDS):
            raise ValueError(
                f"{where}: expected {len(FIELDS)} fields separated by {sep!r}, got {len(fields)}"
            )
        row = [_parse_int(f, name, where) for f, name in zip(fields, FIELDS)]
        if not 1 <= row[2] <= 5:
            raise ValueError(f"{where}: rating {row[2]} is outside 1..5")
        if row[3] < 0:
            raise ValueError(f"{where}: negative timestamp {row[3]}")
        rows.append(row)
    return np.array(rows, dtype=np.int64)


def _parse_fast(lines: list[str], sep: str) -> np.ndarray | None:
    """int64 [lines, 4] via pandas' C parser, or None when anything looks off (then _parse_slow decides)."""
    counts = np.fromiter(map(str.count, lines, [sep] * len(lines)), np.int64, len(lines))
    if (counts != len(FIELDS) - 1).any():
        return None
    text = "\n".join(lines)
    if sep != "\t":
        # The C parser takes one-character separators only.
        if "\t" in text:
            return None
        text = text.replace(sep, "\t")
    try:
        df = pd.read_csv(
            io.StringIO(text),
            sep="\t",
            header=None,
            quoting=csv.QUOTE_NONE,
            na_filter=False,
            skip_blank_lines=False,
            engine="c",
        )
    except (ValueError, pd.errors.ParserError):
        return None
    if df.shape != (len(lines), len(FIELDS)) or any(dt != np.int64 for dt in df.dtypes):
        return None
    values = df.to_numpy(np.int64)
    if not ((values[:, 2] >= 1) & (values[:, 2] <= 5) & (values[:, 3] >= 0)).all():
        return None
    return values


def read_ratings(path: str | os.PathLike, fmt: str) -> pd.DataFrame:
    """Ratings in file order: int64 columns user, item (raw ids), rating (1..5), timestamp (>= 0).

    Any malformed line (blank ones included) raises a ValueError naming the file and 1-based line number.
    """
    path = Path(path)
    sep = SEPARATOR[fmt]
    lines = _read_lines(path)
    values = _parse_fast(lines, sep)
    if values is None:
        values = _parse_slow(lines, sep, path.name)
    return pd.DataFrame(values, columns=list(FIELDS))


def read_titles(data_dir: str | os.PathLike, fmt: str) -> dict[int, str]:
    """Raw movie id -> title from movies.dat / u.item ({} when the file is absent)."""
    path = Path(data_dir) / MOVIES_FILE[fmt]
    if not path.is_file():
        return {}
    sep = TITLE_SEPARATOR[fmt]
    titles: dict[int, str] = {}
    for number, line in enumerate(_read_lines(path), 1):
        where = f"{path.name} line {number}"
        fields = line.split(sep)
        # movies.dat is id::title::genres; u.item is id|title|date|url|19 genre flags.
        if (fmt == "ml-1m" and len(fields) != 3) or len(fields) < 3:
            raise ValueError(f"{where}: expected id{sep}title{sep}... fields, got {_QUOTE.repr(line)}")
        movie = _parse_int(fields[0], "movie id", where)
        if movie in titles:
            raise ValueError(f"{where}: duplicate movie id {movie}")
        titles[movie] = fields[1]
    return titles


def cache_dir(dataset: str) -> Path:
    """Where downloads go: $XDG_CACHE_HOME/hstu/<dataset>, or ~/.cache/hstu/<dataset>."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "hstu" / dataset


def urlopen(url: str):
    """The default opener of `download` (monkeypatch it to simulate the network in tests)."""
    return urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S)


def _fetch(url: str, dest: Path, opener) -> str:
    """Stream url into dest; returns the md5 hex digest of what was written."""
    digest = hashlib.md5()
    with opener(url) as response, open(dest, "wb") as out:
        name = url.rsplit("/", 1)[-1]
        total = getattr(response, "length", None)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}", disable=None) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def download(dataset: str, dest: str | os.PathLike, opener=None) -> Path:
    """Download the GroupLens archive of `dataset` (url and md5 in ARCHIVES), check its md5 and unzip it so
    that the ratings file sits directly in dest. `opener(url)` returns a readable context manager
    (default: the module's `urlopen`)."""
    if dataset not in ARCHIVES:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {sorted(ARCHIVES)}")
    url, md5 = ARCHIVES[dataset]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f".{dataset}.zip.part"
    try:
        got = _fetch(url, archive, opener or urlopen)
    except (OSError, http.client.HTTPException) as err:
        archive.unlink(missing_ok=True)
        # from None: one message says it all, the low-level traceback of a missing network does not help.
        raise DownloadError(
            f"could not download {dataset} from {url} ({type(err).__name__}: {err}). Without network, put "
            f"{RATINGS_FILE[dataset]} and {MOVIES_FILE[dataset]} in {dest}, or give a data folder (data_dir) / set "
            f"HSTU_DATA_DIR to a folder holding them"
        ) from None
    if got != md5:
        archive.unlink()
        raise ValueError(f"md5 mismatch for {url}: expected {md5}, got {got}; the download was deleted")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        except zipfile.BadZipFile as err:
            raise ValueError(f"{url}: not a valid zip archive ({err})") from None
        finally:
            archive.unlink()
        found = sorted(Path(tmp).rglob(RATINGS_FILE[dataset]))
        if not found:
            raise ValueError(f"{url}: the archive holds no {RATINGS_FILE[dataset]}")
        for f in found[0].parent.iterdir():
            if f.is_file():
                os.replace(f, dest / f.name)
    return dest


def resolve_data_dir(data_dir: str | os.PathLike | None, dataset: str = "ml-1m", opener=None) -> Path:
    """The folder holding the ratings file: data_dir if given, else $HSTU_DATA_DIR, else the cache dir
    (downloading `dataset` there when it has no ratings file). A given folder is only checked for a
    ratings file (of either format); `dataset` picks what to download."""
    given = data_dir if data_dir is not None else os.environ.get("HSTU_DATA_DIR") or None
    if given is not None:
        path = Path(given).expanduser()
        detect_format(path)
        return path
    if dataset not in ARCHIVES:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {sorted(ARCHIVES)}")
    path = cache_dir(dataset)
    if not (path / RATINGS_FILE[dataset]).is_file():
        download(dataset, path, opener=opener)
    return path


@dataclass
class MovieLensData:
    """A loaded dataset. item_ids: int64 [num_items], raw movie id of dense id d at index d-1.
    titles: dense id -> title ("item <raw id>" when the movie file has none)."""

    name: str
    data_dir: Path
    sequences: UserSequences
    item_ids: np.ndarray
    titles: dict[int, str]

    @property
    def user_ids(self) -> np.ndarray:
        """int64 [U], raw user ids, ascending (those of `sequences`)."""
        return self.sequences.user_ids

    @property
    def num_items(self) -> int:
        return self.sequences.num_items


def load_movielens(data_dir: str | os.PathLike | None = None, dataset: str = "ml-1m") -> MovieLensData:
    """Locate (see resolve_data_dir), parse and sequence a MovieLens dataset; name is the detected format."""
    path = resolve_data_dir(data_dir, dataset)
    fmt = detect_format(path)
    seqs, item_ids = UserSequences.from_ratings(read_ratings(path / RATINGS_FILE[fmt], fmt))
    raw_titles = read_titles(path, fmt)
    titles = {d: raw_titles.get(int(raw), f"item {raw}") for d, raw in enumerate(item_ids, 1)}
    return MovieLensData(name=fmt, data_dir=path, sequences=seqs, item_ids=item_ids, titles=titles)
