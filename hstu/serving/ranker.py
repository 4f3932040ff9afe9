"""``Ranker``: retrieval top-K over the whole catalogue, then M-FALCON scoring of those K candidates, sorted by a
blend of retrieval score and predicted rating."""

from dataclasses import dataclass

import torch

from ..jagged import check_offsets, segment_ids
from ..model import HSTURecommender
from .retrieval_index import INDEXES, RetrievalIndex, faiss_available

RATING_MIN, RATING_MAX = 1.0, 5.0  # the MovieLens rating scale the blend maps to [0, 1]


@dataclass
class Ranking:
    """What ``Ranker.rank`` returns: each user's top items, best first, jagged by ``offsets [B+1]``.

    items: ``[R]`` int64 item ids (never 0). retrieval: ``[R]`` the model's retrieval logit, cosine(user vector,
    item embedding) / temperature. ratings: ``[R]`` predicted ratings (the rating head, unclamped). final: ``[R]``
    the blend the rows are sorted by (see ``Ranker``). A user gets fewer than ``k`` rows only when fewer items
    are left after excluding item 0 and the seen items.
    """

    items: torch.Tensor
    retrieval: torch.Tensor
    ratings: torch.Tensor
    final: torch.Tensor
    offsets: torch.Tensor

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    def user(self, b: int) -> dict[str, torch.Tensor]:
        """User ``b``'s rows: ``{"item", "retrieval", "rating", "final"}``, tensors, best first."""
        lo, hi = int(self.offsets[b]), int(self.offsets[b + 1])
        return {"item": self.items[lo:hi], "retrieval": self.retrieval[lo:hi], "rating": self.ratings[lo:hi],
                "final": self.final[lo:hi]}


def _check_finite(what: str, values: torch.Tensor) -> None:
    bad = int((~torch.isfinite(values)).any(-1).sum()) if values.dim() > 1 else int((~torch.isfinite(values)).sum())
    if bad:
        raise ValueError(f"the model gave non-finite {what} ({bad} of {values.shape[0]}): its weights or inputs "
                         "are broken, so it cannot rank")


class Ranker:
    """Two-stage recommendation with an ``HSTURecommender``: retrieval, then M-FALCON ranking.

    1. Retrieval: each user's history is encoded once (``model.prefill``); the encoder output at the last
       history position is the user vector, and the ``retrieve_k`` items of highest cosine(user vector, item
       embedding) over the whole catalogue are the candidates. Item 0 (padding) is never a candidate, nor (by
       default) any item already in the user's history. ``index="exact"`` multiplies the normalised user
       vectors with the normalised item table (on the model's device, CPU or GPU); ``index="faiss"`` searches a
       ``faiss.IndexFlatIP`` over the float32 normalised item embeddings (same items up to float32 rounding);
       ``"auto"`` takes FAISS when it is installed and the model is on the CPU, else exact.
    2. Ranking: ``model.score_candidates`` runs the candidates as target tokens against the cached histories
       (M-FALCON, ``microbatch_size`` candidates per user per pass), giving each a predicted rating; the
       candidates are sorted by

           final = (1 - w) * cosine + w * (clamp(rating, 1, 5) - 1) / 4

       where ``cosine`` = retrieval logit * temperature, in [-1, 1], ``rating`` the rating head's prediction
       (the MovieLens 1..5 scale mapped to [0, 1]) and ``w`` = ``rating_weight`` in [0, 1]: ``w = 0`` ranks
       by retrieval score only, ``w = 1`` by predicted rating only (ties keep the retrieval order).

    A cold-start user (empty history) has a zero user vector: every retrieval score is 0, so its candidates
    are an arbitrary ``retrieve_k`` unseen items, ranked by rating. The FAISS index and the exact path's
    normalised item table are built in the constructor: call ``rebuild_index()`` after changing the model's
    item embeddings. The model must be in eval mode.

    Args:
        model: the recommender (left as it is: the ranker neither moves it nor changes its mode).
        index: "auto", "exact" or "faiss" (``pip install faiss-cpu``, or the ``serve`` extra).
        retrieve_k: K, candidates retrieved per user (capped at the catalogue size).
        microbatch_size: candidates per user per M-FALCON pass (None: all at once); the scores do not depend on it.
        rating_weight: w of the blend, in [0, 1].
        device: where inputs go and exact retrieval runs (default: the model's device, where the model must be).

    ``rank(items, actions, seq_offsets, timestamps, k=...)`` ranks a batch of users in one go (jagged, as
    ``model.prefill`` takes them); ``retrieve(user_vectors, ...)`` is the retrieval stage alone.
    """

    def __init__(
        self,
        model: HSTURecommender,
        *,
        index: str = "auto",
        retrieve_k: int = 200,
        microbatch_size: int | None = 256,
        rating_weight: float = 0.5,
        device=None,
    ):
        if index not in INDEXES:
            raise ValueError(f"index must be one of {', '.join(INDEXES)}, got {index!r}")
        if isinstance(retrieve_k, bool) or not isinstance(retrieve_k, int) or retrieve_k < 1:
            raise ValueError(f"retrieve_k must be an int >= 1, got {retrieve_k!r}")
        if microbatch_size is not None and (
            isinstance(microbatch_size, bool) or not isinstance(microbatch_size, int) or microbatch_size < 1
        ):
            raise ValueError(f"microbatch_size must be a positive int or None, got {microbatch_size!r}")
        if isinstance(rating_weight, bool) or not isinstance(rating_weight, (int, float)) or not 0 <= rating_weight <= 1:
            raise ValueError(f"rating_weight must be a number in [0, 1], got {rating_weight!r}")
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if index == "auto":
            index = "faiss" if self.device.type == "cpu" and faiss_available() else "exact"
        elif index == "faiss" and not faiss_available():
            raise ValueError("index='faiss' needs FAISS: pip install faiss-cpu (or the package's `serve` extra)")
        self.index = index
        self.retrieve_k = retrieve_k
        self.microbatch_size = microbatch_size
        self.rating_weight = float(rating_weight)
        self.rebuild_index()

    @property
    def num_items(self) -> int:
        return self.model.config.num_items

    def rebuild_index(self) -> None:
        """(Re)build the retrieval index from the model's current item embeddings (items 1..num_items)."""
        self._index = RetrievalIndex(self.model, self.index, self.device)

    def retrieve(self, user_vectors: torch.Tensor, k: int | None = None, seen_items: torch.Tensor | None = None,
                 seen_offsets: torch.Tensor | None = None):
        """Top-``k`` items (default ``retrieve_k``) for each user vector: see ``RetrievalIndex.search``."""
        return self._index.search(user_vectors, self.retrieve_k if k is None else k, seen_items, seen_offsets)

    # ------------------------------------------------------------------ ranking

    def blend(self, retrieval: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        """``(1 - w) * retrieval * temperature + w * (clamp(ratings, 1, 5) - 1) / 4``, w = ``rating_weight``."""
        w = self.rating_weight
        cosine = retrieval * self.model.config.temperature
        rating = (ratings.clamp(RATING_MIN, RATING_MAX) - RATING_MIN) / (RATING_MAX - RATING_MIN)
        return (1 - w) * cosine + w * rating.to(cosine.dtype)

    @torch.no_grad()
    def rank(
        self,
        items: torch.Tensor,
        actions: torch.Tensor,
        seq_offsets: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        *,
        k: int | None = None,
        exclude_seen: bool = True,
        seen_items: torch.Tensor | None = None,
        seen_offsets: torch.Tensor | None = None,
    ) -> Ranking:
        """Rank items for a batch of users.

        Args:
            items, actions: ``[L]`` int64 history events, jagged per user by ``seq_offsets [B+1]``, oldest first
                (as ``model.prefill`` takes them); each history is cut to its last ``max_seq_len - 1`` events.
                An empty history is a cold-start user.
            timestamps: ``[L]`` int64 seconds, or None for no time bias. The candidates are scored at each user's
                last history timestamp.
            k: rows per user, at most ``retrieve_k`` (default None: all ``retrieve_k`` candidates).
            exclude_seen: never return an item of the user's history (the whole of it, before the cut).
            seen_items, seen_offsets: with ``exclude_seen``, the items to exclude instead of the history, jagged
                per user (e.g. a history longer than the one passed in).

        Returns:
            a ``Ranking``: each user's top ``k`` candidates by the blend, with their retrieval logits and
            predicted ratings (both from ``model.score_candidates``).
        """
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"k must be an int >= 1 or None, got {k!r}")
        if k is not None and k > self.retrieve_k:
            raise ValueError(f"k = {k} is more than retrieve_k = {self.retrieve_k}: raise retrieve_k")
        dev = self.device
        items, actions = items.to(dev, torch.int64), actions.to(dev, torch.int64)
        timestamps = None if timestamps is None else timestamps.to(dev, torch.int64)
        if items.dim() != 1 or actions.shape != items.shape or (timestamps is not None and timestamps.shape != items.shape):
            raise ValueError("items, actions and timestamps must be [L] tensors of the same length")
        seq_offsets = check_offsets("seq_offsets", seq_offsets.to(dev), items.shape[0])
        B = seq_offsets.shape[0] - 1
        if exclude_seen and seen_items is None:
            seen_items, seen_offsets = items, seq_offsets
        elif not exclude_seen:
            seen_items = seen_offsets = None

        # the last max_seq_len - 1 events of each history
        keep_len = self.model.config.max_seq_len - 1
        lengths = seq_offsets[1:] - seq_offsets[:-1]
        if B > 0 and int(lengths.max()) > keep_len:
            seg = segment_ids(seq_offsets, items.shape[0])
            keep = torch.arange(items.shape[0], device=dev) >= seq_offsets[1:][seg] - keep_len
            items, actions = items[keep], actions[keep]
            timestamps = None if timestamps is None else timestamps[keep]
            seq_offsets = torch.zeros_like(seq_offsets)
            torch.cumsum(lengths.clamp(max=keep_len), 0, out=seq_offsets[1:])

        cache = self.model.prefill(items, actions, seq_offsets, timestamps)
        # a NaN user vector would retrieve nothing and rank nothing, without a word
        _check_finite("user vectors", cache.last_output)
        cands, _, cand_offsets = self.retrieve(cache.last_output, None, seen_items, seen_offsets)
        scores = self.model.score_candidates(cache, cands, cand_offsets, microbatch_size=self.microbatch_size)
        final = self.blend(scores.retrieval, scores.ratings)
        _check_finite("candidate scores", final)

        # sort each user's candidates by the blend (stable: ties keep the retrieval order), keep the first k
        C = cands.shape[0]
        seg = segment_ids(cand_offsets, C)
        order = torch.argsort(final, descending=True, stable=True)
        order = order[torch.argsort(seg[order], stable=True)]
        counts = cand_offsets[1:] - cand_offsets[:-1]
        if k is not None:
            rank_in_user = torch.arange(C, device=dev) - cand_offsets[seg]
            order = order[rank_in_user < k]
            counts = counts.clamp(max=k)
        offsets = torch.zeros_like(cand_offsets)
        torch.cumsum(counts, 0, out=offsets[1:])
        return Ranking(items=cands[order], retrieval=scores.retrieval[order], ratings=scores.ratings[order],
                       final=final[order], offsets=offsets)
