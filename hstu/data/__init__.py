"""MovieLens loading (``movielens``), per-user event sequences and the leave-one-out split (``sequences``),
and model batches (``batching``)."""

from .movielens import MovieLensData, detect_format, load_movielens, read_ratings, read_titles, resolve_data_dir
from .sequences import UserSequences, leave_one_out

__all__ = [
    "MovieLensData", "UserSequences", "detect_format", "leave_one_out", "load_movielens", "read_ratings",
    "read_titles", "resolve_data_dir",
]
