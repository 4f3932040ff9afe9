"""Serving: load a checkpoint with its data, and rank items for users with ``Ranker`` (retrieval top-K over the
whole catalogue, then M-FALCON scoring of those K candidates and a blend of retrieval score and rating)."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .actions import actions_from_ratings
from .checkpoint import CheckpointError, load_checkpoint, non_finite_tensors
from .config import ArgumentError
from .model import HSTURecommender
from .train import load_sequences, resolve_device

INDEXES = ("auto", "exact", "faiss")
RATING_MIN, RATING_MAX = 1.0, 5.0  # the MovieLens rating scale the blend maps to [0, 1]
_EXACT_CHUNK_ELEMENTS = 1 << 24  # exact retrieval scores at most this many (user, item) pairs at once


def load_for_inference(checkpoint, data_dir: str | None = None, dataset: str = "ml-1m", device: str = "auto"):
    """-> (model in eval mode, MovieLensData, leave-one-out UserSequences, device). The data folder defaults to
    the one the checkpoint was trained on; its items must be the checkpoint's. ``CheckpointError`` names the
    file when it is damaged, foreign, or holds weights that do not fit its config or are not finite."""
    dev = resolve_device(device)
    path = Path(checkpoint)
    ckpt = load_checkpoint(path, map_location=dev, require=("model_config", "model", "item_ids", "data_dir"))
    try:
        model = HSTURecommender.from_config(ckpt["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} has an unusable model_config ({err})") from None
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path}: its weights do not fit its model_config ({first[:200]})") from None
    bad = non_finite_tensors(ckpt["model"])
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite weights ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}): the run that wrote it diverged")
    data, seqs = load_sequences(data_dir or ckpt["data_dir"], dataset)
    if data.item_ids.tolist() != list(ckpt["item_ids"]):
        raise ArgumentError(
            "data_dir", f"the items in {data.data_dir} differ from those {path} was trained on ({ckpt['data_dir']}): "
            "load the training data"
        )
    model = model.to(dev)
    model.eval()
    return model, data, seqs, dev


def faiss_available() -> bool:
    """Whether ``import faiss`` works (``pip install faiss-cpu``, or the ``serve`` extra)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


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


def _segments(offsets: torch.Tensor, total: int) -> torch.Tensor:
    """``[total]`` the segment (user) index of each row of a jagged tensor with ``offsets [B+1]``."""
    b = offsets.shape[0] - 1
    return torch.repeat_interleave(torch.arange(b, device=offsets.device), offsets[1:] - offsets[:-1],
                                   output_size=total)


def _check_offsets(name: str, offsets: torch.Tensor, length: int) -> torch.Tensor:
    if offsets.dim() != 1 or offsets.shape[0] < 1:
        raise ValueError(f"{name} must have shape [B+1], got {tuple(offsets.shape)}")
    offsets = offsets.to(torch.int64)
    if int(offsets[0]) != 0 or int(offsets[-1]) != length or bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError(f"{name} must rise from 0 to {length} (the number of rows it splits), got {offsets.tolist()}")
    return offsets


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

    @torch.no_grad()
    def rebuild_index(self) -> None:
        """(Re)build the retrieval index from the model's current item embeddings (items 1..num_items)."""
        table = self.model.normalized_items()[1:].detach().to(self.device)
        if self.index == "faiss":
            import faiss

            self._table = None
            self._faiss = faiss.IndexFlatIP(table.shape[1])
            self._faiss.add(np.ascontiguousarray(table.float().cpu().numpy()))
        else:
            self._table = table
            self._faiss = None

    # ------------------------------------------------------------------ retrieval

    @torch.no_grad()
    def retrieve(
        self,
        user_vectors: torch.Tensor,
        k: int | None = None,
        seen_items: torch.Tensor | None = None,
        seen_offsets: torch.Tensor | None = None,
    ):
        """Top-``k`` items (default ``retrieve_k``; at most the catalogue) for each user vector.

        Args:
            user_vectors: ``[B, D]`` encoder outputs (``KVCache.last_output``); a zero vector scores 0 everywhere.
            seen_items, seen_offsets: ``[S]`` item ids jagged per user by ``[B+1]``: items never returned (or None).

        Returns:
            ``(items [R] int64, logits [R], offsets [B+1])``, jagged per user, best first; logits are
            cosine / temperature (float32 with FAISS). A user gets fewer than ``k`` items only when its seen
            items leave fewer.
        """
        k = self.retrieve_k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        k = min(k, self.num_items)
        B = user_vectors.shape[0]
        user = F.normalize(user_vectors.detach().to(self.device), dim=-1)
        if (seen_items is None) != (seen_offsets is None):
            raise ValueError("seen_items and seen_offsets go together")
        if seen_items is None:
            seen_items = torch.zeros(0, dtype=torch.int64, device=self.device)
            seen_offsets = torch.zeros(B + 1, dtype=torch.int64, device=self.device)
        seen_items = seen_items.to(self.device, torch.int64)
        seen_offsets = _check_offsets("seen_offsets", seen_offsets.to(self.device), seen_items.shape[0])
        if seen_offsets.shape[0] != B + 1:
            raise ValueError(f"seen_offsets must have shape [B+1] = [{B + 1}], got {tuple(seen_offsets.shape)}")
        if B == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=self.device)
            return empty, user.new_zeros(0), torch.zeros(1, dtype=torch.int64, device=self.device)
        if self.index == "faiss":
            items, scores, valid = self._search_faiss(user, k, seen_items, seen_offsets)
        else:
            items, scores, valid = self._search_exact(user, k, seen_items, seen_offsets)
        offsets = torch.zeros(B + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(valid.sum(1), 0, out=offsets[1:])
        # the valid entries of each row are its best ones, in order: a row-major select keeps that order
        return items[valid], scores[valid] / self.model.config.temperature, offsets

    def _search_exact(self, user, k, seen_items, seen_offsets):
        n = self.num_items
        chunk = max(1, _EXACT_CHUNK_ELEMENTS // n)
        bounds = seen_offsets.tolist()
        values, indices = [], []
        for lo in range(0, user.shape[0], chunk):
            hi = min(lo + chunk, user.shape[0])
            logits = user[lo:hi] @ self._table.t().to(user.dtype)  # [b, n]: column j is item j + 1
            s_lo, s_hi = bounds[lo], bounds[hi]
            if s_hi > s_lo:
                rows = _segments(seen_offsets[lo:hi + 1] - s_lo, s_hi - s_lo)
                cols = seen_items[s_lo:s_hi] - 1
                keep = (cols >= 0) & (cols < n)
                logits[rows[keep], cols[keep]] = float("-inf")
            top = logits.topk(k, dim=1)
            values.append(top.values)
            indices.append(top.indices + 1)
        values, items = torch.cat(values), torch.cat(indices)
        return items, values, values > float("-inf")

    def _search_faiss(self, user, k, seen_items, seen_offsets):
        B, n = user.shape[0], self.num_items
        counts = seen_offsets[1:] - seen_offsets[:-1]
        kk = min(n, k + int(counts.max()))
        scores, ids = self._faiss.search(np.ascontiguousarray(user.float().cpu().numpy()), kk)
        scores = torch.from_numpy(scores).to(self.device)
        items = torch.from_numpy(ids).to(self.device, torch.int64) + 1  # FAISS row j is item j + 1; -1 -> 0
        valid = items > 0
        if seen_items.shape[0] > 0:
            stride = n + 1
            seen_keys = _segments(seen_offsets, seen_items.shape[0]) * stride + seen_items
            keys = torch.arange(B, device=self.device)[:, None] * stride + items
            valid &= ~torch.isin(keys, seen_keys)
        valid &= valid.cumsum(1) <= k
        return items, scores, valid

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
        seq_offsets = _check_offsets("seq_offsets", seq_offsets.to(dev), items.shape[0])
        B = seq_offsets.shape[0] - 1
        if exclude_seen and seen_items is None:
            seen_items, seen_offsets = items, seq_offsets
        elif not exclude_seen:
            seen_items = seen_offsets = None

        # the last max_seq_len - 1 events of each history
        keep_len = self.model.config.max_seq_len - 1
        lengths = seq_offsets[1:] - seq_offsets[:-1]
        if B > 0 and int(lengths.max()) > keep_len:
            seg = _segments(seq_offsets, items.shape[0])
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
        seg = _segments(cand_offsets, C)
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


def user_history(data, user_id: int):
    """MovieLens user ``user_id``'s events, oldest first: ``(items, actions, timestamps)`` int64 numpy arrays.
    ValueError for an unknown user."""
    seqs = data.sequences
    pos = int(np.searchsorted(seqs.user_ids, user_id))
    if pos >= len(seqs.user_ids) or seqs.user_ids[pos] != user_id:
        raise ArgumentError("user_id", f"no such user {user_id} in {data.data_dir} "
                            f"(ids {seqs.user_ids[0]}..{seqs.user_ids[-1]})")
    lo, hi = seqs.offsets[pos], seqs.offsets[pos + 1]
    return seqs.items[lo:hi], actions_from_ratings(seqs.ratings[lo:hi]), seqs.timestamps[lo:hi]


def recommend(
    model,
    data,
    user_id: int,
    k: int = 10,
    exclude_seen: bool = True,
    device="cpu",
    *,
    ranker: Ranker | None = None,
    **ranker_kwargs,
) -> list[dict]:
    """Top-``k`` items for MovieLens user ``user_id`` after their whole history (scored on its most recent
    ``max_seq_len - 1`` events), ranked by ``ranker`` (default: ``Ranker(model, device=device, **ranker_kwargs)``).

    Returns ``[{"item": raw id, "title", "score": retrieval logit, "rating": predicted rating, "final": blend}]``,
    best first.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ArgumentError("k", f"must be an integer >= 1, got {k!r}")
    items, actions, stamps = user_history(data, user_id)
    if ranker is None:
        ranker = Ranker(model, device=device, **ranker_kwargs)
    dev = ranker.device
    ranking = ranker.rank(
        torch.from_numpy(items).to(dev), torch.from_numpy(actions).to(dev), torch.tensor([0, len(items)], device=dev),
        torch.from_numpy(stamps).to(dev), k=k, exclude_seen=exclude_seen,
    )
    return [
        {"item": int(data.item_ids[i - 1]), "title": data.titles.get(i, f"item {i}"), "score": s, "rating": r,
         "final": f}
        for i, s, r, f in zip(ranking.items.tolist(), ranking.retrieval.float().tolist(),
                              ranking.ratings.float().tolist(), ranking.final.float().tolist())
    ]
