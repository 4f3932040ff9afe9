"""Serving: load a checkpoint with its data (``loading``), the retrieval index (``retrieval_index``: exact or
FAISS), the two-stage ``Ranker`` (retrieval, then M-FALCON ranking; ``ranker``), and MovieLens recommendations
for one user (``recommend``)."""

from .loading import load_for_inference
from .ranker import Ranker, Ranking
from .recommend import recommend, user_history
from .retrieval_index import INDEXES, RetrievalIndex, faiss_available

__all__ = ["load_for_inference", "Ranker", "Ranking", "recommend", "user_history", "INDEXES", "RetrievalIndex",
           "faiss_available"]
