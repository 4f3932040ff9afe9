"""The retrieval stage's index: the normalised item table searched exactly (a matmul on the model's device) or
with FAISS (``IndexFlatIP`` over the float32 normalised embeddings), seen items and item 0 excluded."""

import numpy as np
import torch
import torch.nn.functional as F

from ..jagged import check_offsets, segment_ids

INDEXES = ("auto", "exact", "faiss")
_EXACT_CHUNK_ELEMENTS = 1 << 24  # exact retrieval scores at most this many (user, item) pairs at once


def faiss_available() -> bool:
    """Whether ``import faiss`` works (``pip install faiss-cpu``, or the ``serve`` extra)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class RetrievalIndex:
    """``kind`` "exact" or "faiss" over ``model``'s item embeddings, searched on ``device``."""

    def __init__(self, model, kind: str, device):
        self.model, self.index, self.device = model, kind, device
        self.rebuild()

    @property
    def num_items(self) -> int:
        return self.model.config.num_items

    @torch.no_grad()
    def rebuild(self) -> None:
        """(Re)build from the model's current item embeddings (items 1..num_items)."""
        table = self.model.normalized_items()[1:].detach().to(self.device)
        if self.index == "faiss":
            import faiss

            self._table = None
            self._faiss = faiss.IndexFlatIP(table.shape[1])
            self._faiss.add(np.ascontiguousarray(table.float().cpu().numpy()))
        else:
            self._table = table
            self._faiss = None

    @torch.no_grad()
    def search(
        self,
        user_vectors: torch.Tensor,
        k: int,
        seen_items: torch.Tensor | None = None,
        seen_offsets: torch.Tensor | None = None,
    ):
        """Top-``k`` items (at most the catalogue) for each user vector.

        Args:
            user_vectors: ``[B, D]`` encoder outputs (``KVCache.last_output``); a zero vector scores 0 everywhere.
            seen_items, seen_offsets: ``[S]`` item ids jagged per user by ``[B+1]``: items never returned (or None).

        Returns:
            ``(items [R] int64, logits [R], offsets [B+1])``, jagged per user, best first; logits are
            cosine / temperature (float32 with FAISS). A user gets fewer than ``k`` items only when its seen
            items leave fewer.
        """
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
        seen_offsets = check_offsets("seen_offsets", seen_offsets.to(self.device), seen_items.shape[0])
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
                rows = segment_ids(seen_offsets[lo:hi + 1] - s_lo, s_hi - s_lo)
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
            seen_keys = segment_ids(seen_offsets, seen_items.shape[0]) * stride + seen_items
            keys = torch.arange(B, device=self.device)[:, None] * stride + items
            valid &= ~torch.isin(keys, seen_keys)
        valid &= valid.cumsum(1) <= k
        return items, scores, valid
