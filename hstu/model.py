"""The HSTU recommender: encoder + retrieval head (sampled softmax over cosine similarities) + rating head."""

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .bias import TIME_BUCKETS
from .config import ModelConfig, saved_model_fields
from .encoder import HSTUEncoder
from .jagged import group_slots
from .kv_cache import KVCache
from .products_lse import products_logsumexp


@dataclass
class CandidateScores:
    """What ``HSTURecommender.score_candidates`` returns, one row per candidate (in the input order).

    outputs: ``[C, D]`` encoder outputs of the candidate tokens. ratings: ``[C]`` predicted ratings (the rating
    head on ``outputs``). retrieval: ``[C]`` cosine(user vector at the last history position, candidate item
    embedding) / temperature (0 for a cold-start user, whose user vector is zero).
    """

    outputs: torch.Tensor
    ratings: torch.Tensor
    retrieval: torch.Tensor


class HSTURecommender(nn.Module):
    """HSTU with two heads.

    Retrieval: the encoder output at a history position is the user vector for the next item; user and item
    vectors (the item embedding table) are L2-normalised and ``logit = cosine / temperature``.
    Rating: an MLP on each target token's output predicts that target's rating.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.encoder = HSTUEncoder(
            c.num_items, c.num_actions, c.dim, c.num_layers, c.num_heads, c.max_seq_len, c.dropout,
            c.attn_activation, c.max_attn_len, c.fused, time_boundaries=TIME_BUCKETS[c.time_buckets],
            input_norm=c.input_norm, attn_bias=c.attn_bias, use_actions=c.use_actions, input_mode=c.input_mode,
            position_embedding=c.position_embedding, item_init_std=c.item_init_std,
        )
        self.rating_head = nn.Sequential(nn.Linear(c.dim, c.dim), nn.SiLU(), nn.Linear(c.dim, 1))
        # start at a typical rating so the first steps of the rating loss do not swamp the retrieval loss
        nn.init.constant_(self.rating_head[-1].bias, 3.5)

    @classmethod
    def from_config(cls, config: dict) -> "HSTURecommender":
        """The model of a saved ``config_dict()``; a config saved before a default changed keeps its old value."""
        return cls(ModelConfig(**saved_model_fields(config)))

    def config_dict(self) -> dict:
        return asdict(self.config)

    def forward(self, batch, rows: Optional[torch.Tensor] = None, dense_segments: int = 0) -> torch.Tensor:
        """Encoder outputs ``[L, D]`` for a ``JaggedBatch``; with ``rows [R]`` (int64 token indices) only those
        rows, ``[R, D]``, at a fraction of the last block's cost; with ``dense_segments = k`` too, ``[L, D]``
        exact on the first ``k`` segments and on ``rows``, zero elsewhere (``HSTUEncoder.forward``)."""
        qts = batch.next_timestamps if self.config.time_query == "next" and batch.timestamps is not None else None
        return self.encoder(batch.items, batch.actions, batch.seq_offsets, batch.timestamps, batch.num_targets,
                            query_timestamps=qts, output_rows=rows, dense_segments=dense_segments)

    def normalized_items(self) -> torch.Tensor:
        """``[num_items + 1, D]`` unit item vectors (row 0 is padding)."""
        return F.normalize(self.encoder.item_table, dim=-1)

    def retrieval_logits(self, user: torch.Tensor, items: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``user [..., D]`` against ``items [M]`` (default: every item, ids 0..num_items) -> ``[..., M]``."""
        table = self.normalized_items() if items is None else F.normalize(self.encoder.item_table[items], dim=-1)
        return F.normalize(user, dim=-1) @ table.t().to(user.dtype) / self.config.temperature

    def retrieval_loss(
        self, out: torch.Tensor, next_items: torch.Tensor, seq_offsets: torch.Tensor, generator=None,
        negatives: Optional[torch.Tensor] = None, reduction: str = "mean",
    ) -> torch.Tensor:
        """Sampled softmax over cosine similarity / temperature.

        Each labelled position (``next_items > 0``) scores its next item against ``num_negatives`` items drawn
        uniformly, anew each batch; accidental hits (a negative equal to the positive) are masked out. Under
        ``negatives = "sequence"`` one draw serves all of a sequence's positions: a ``[B, T, num_negatives]`` score
        tensor with no ``[L, num_negatives, D]`` gather (on MovieLens-100K that learned several times faster per
        step than one set for the batch). Under ``"position"`` every labelled position draws its own, as Meta's
        and rectools' samplers do.

        Args:
            out: ``[L, D]`` encoder outputs, jagged by ``seq_offsets [B+1]``.
            next_items: ``[L]`` int64 next-item labels (0: no label).
            negatives: item ids to use instead of drawing them: ``[B, num_negatives]`` per sequence (data-parallel
                ranks draw a global batch's negatives alike and keep their own sequences' rows), or
                ``[R, num_negatives]`` per labelled position under ``"position"``.
            reduction: ``"mean"`` over the labelled positions, or ``"sum"`` (a rank's part of a global mean).
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        labelled = next_items > 0
        if not bool(labelled.any()):
            return out.sum() * 0.0
        lengths = seq_offsets[1:] - seq_offsets[:-1]
        B, K = lengths.shape[0], self.config.num_negatives
        per_position = self.config.negatives == "position"
        rows = labelled.nonzero().squeeze(1)
        pos = next_items.index_select(0, rows)
        draw = (pos.shape[0] if per_position else B, K)
        if negatives is None:
            negs = torch.randint(1, self.config.num_items + 1, draw, device=out.device, generator=generator)
        elif tuple(negatives.shape) != draw:
            raise ValueError(f"negatives must have shape {list(draw)} (negatives = {self.config.negatives!r}), got "
                             f"{list(negatives.shape)}")
        else:
            negs = negatives.to(out.device)
        table = F.normalize(self.encoder.item_table.float(), dim=-1)
        u = F.normalize(out.float().index_select(0, rows), dim=-1)  # [R, D]
        pos_logit = (u * table.index_select(0, pos)).sum(-1) / self.config.temperature
        if per_position:
            neg_logit = _rowwise_logits(u, table, negs).masked_fill(negs == pos[:, None], float("-inf"))
            neg_lse = torch.logsumexp(neg_logit / self.config.temperature, dim=1)
        else:
            seg = torch.repeat_interleave(torch.arange(B, device=out.device), lengths, output_size=out.shape[0])
            # unit vectors: every score lies within +-1 / temperature
            neg_lse = _shared_negatives_lse(u / self.config.temperature, pos, rows, seg.index_select(0, rows),
                                            seq_offsets, negs, table, bound=1.0 / self.config.temperature)
        # log(exp(pos) + sum over the negatives that are not the positive of exp(neg)) - pos
        loss = torch.logaddexp(pos_logit, neg_lse) - pos_logit
        return loss.sum() if reduction == "sum" else loss.mean()

    def predict_ratings(self, target_out: torch.Tensor) -> torch.Tensor:
        """``[T, D]`` target-token outputs -> ``[T]`` predicted ratings."""
        return self.rating_head(target_out).squeeze(-1)

    def prefill(self, items, actions, seq_offsets, timestamps=None, request_times=None) -> KVCache:
        """Encode user histories once for candidate scoring: see ``HSTUEncoder.prefill``.

        Under ``time_query = "next"`` each history event's query time is the next event's, and the last one's is
        ``request_times [B]`` (int64 seconds; default: each user's last history timestamp)."""
        qts = None
        if self.config.time_query == "next" and timestamps is not None:
            qts = next_event_times(timestamps, seq_offsets, request_times)
        return self.encoder.prefill(items, actions, seq_offsets, timestamps, query_timestamps=qts)

    @torch.no_grad()
    def score_candidates(
        self,
        cache: KVCache,
        cand_items: torch.Tensor,
        cand_offsets: torch.Tensor,
        cand_timestamps: Optional[torch.Tensor] = None,
        query_timestamps: Optional[torch.Tensor] = None,
        microbatch_size: Optional[int] = None,
    ) -> CandidateScores:
        """M-FALCON scoring of candidates (jagged per user by ``cand_offsets [B+1]``) against ``cache``.

        The arguments are ``HSTUEncoder.score_candidates``'s (candidate timestamps default to the request time,
        each user's last history timestamp). Returns per-candidate outputs, rating predictions and retrieval
        scores; none of them depends on ``microbatch_size`` or on the other candidates.
        """
        out = self.encoder.score_candidates(cache, cand_items, cand_offsets, cand_timestamps, query_timestamps, microbatch_size)
        n_c = (cand_offsets[1:] - cand_offsets[:-1]).to(torch.int64)
        user = torch.repeat_interleave(cache.last_output, n_c, dim=0, output_size=cand_items.shape[0])
        item = F.normalize(self.encoder.item_table[cand_items], dim=-1).to(user.dtype)
        retrieval = (F.normalize(user, dim=-1) * item).sum(-1) / self.config.temperature
        return CandidateScores(outputs=out, ratings=self.predict_ratings(out), retrieval=retrieval)


def _rowwise_logits(u: torch.Tensor, table: torch.Tensor, negs: torch.Tensor, budget: int = 2**22) -> torch.Tensor:
    """``u [R, D]`` against its own items ``negs [R, K]`` of ``table [N, D]`` -> ``[R, K]``, in row chunks of about
    ``budget`` elements. Up to 32 K items it scores every item and gathers: a dense matmul, cheaper on a CPU than
    gathering ``[rows, K, D]`` item vectors (whose gradient is a scatter-add), which larger catalogues do."""
    n, k = table.shape[0], negs.shape[1]
    full = n <= 32 * k
    step = max(1, budget // (n if full else k * u.shape[1]))
    parts = []
    for s in range(0, u.shape[0], step):
        uc, nc = u[s:s + step], negs[s:s + step]
        parts.append((uc @ table.t()).gather(1, nc) if full else torch.einsum("rd,rkd->rk", uc, table[nc]))
    return torch.cat(parts) if parts else u.new_zeros((0, k))


def _shared_negatives_lse(u: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor, row_seq: torch.Tensor,
                          seq_offsets: torch.Tensor, negs: torch.Tensor, table: torch.Tensor,
                          bound: Optional[float] = None) -> torch.Tensor:
    """``logsumexp`` over each labelled row's sequence negatives, leaving out those equal to its positive.

    ``u [R, D]`` (scaled) user vectors of the labelled token ``rows [R]`` of sequences ``row_seq [R]``, positives
    ``pos [R]``, ``negs [B, K]`` item ids per sequence of ``table [N, D]`` -> ``[R]``. Scored as one
    ``[B', T, D] x [B', D, K]`` matmul over only the ``B'`` sequences that have a labelled row, up to their last
    labelled position ``T``; the accidental hits (about ``K / N`` of the rows hold one) are found by a sorted
    search and only their rows are scored again with the hit masked, so no ``[R, K]`` gather or mask is built.
    """
    B, K = negs.shape
    keep = torch.zeros(B, dtype=torch.bool, device=u.device).index_fill_(0, row_seq, True)
    seq = (keep.cumsum(0) - 1).index_select(0, row_seq)  # the row's sequence among the kept ones
    at = rows - seq_offsets[:-1].to(rows.dtype).index_select(0, row_seq)
    kept, last = (int(x) for x in torch.stack([keep.sum(), at.max()]).tolist())
    T = last + 1
    flat = seq * T + at
    kept_negs = negs[keep]  # [B', K]
    u_pad = u.new_zeros(kept * T, u.shape[1]).index_copy(0, flat, u).view(kept, T, -1)
    items = table.index_select(0, kept_negs.reshape(-1)).view(kept, K, -1)
    lse = products_logsumexp(u_pad, items, bound).view(kept * T).index_select(0, flat)
    # the rows whose positive is among their sequence's negatives: search (sequence, item) keys
    span = int(table.shape[0])
    keys = (torch.arange(kept, device=u.device)[:, None] * span + kept_negs).reshape(-1).sort().values
    want = seq * span + pos
    found = torch.searchsorted(keys, want).clamp_(max=keys.shape[0] - 1)
    hit = (keys.index_select(0, found) == want).nonzero().squeeze(1)
    if hit.shape[0]:
        # scored again as one small [B', hits, D] x [B', D, K] product: a gather of their sequences' [hits, K, D]
        # item vectors would cost a scatter-add as large in the backward
        hit_seq = seq.index_select(0, hit)
        at_hit, width = group_slots(hit_seq, kept)
        u_hit = u.new_zeros(kept * width, u.shape[1]).index_copy(0, at_hit, u.index_select(0, hit))
        fixed = torch.bmm(u_hit.view(kept, width, -1), items.transpose(1, 2)).view(kept * width, K)
        fixed = fixed.index_select(0, at_hit)
        mask = kept_negs.index_select(0, hit_seq) == pos.index_select(0, hit)[:, None]
        # finfo.min, not -inf: a row whose negatives are all its positive then sums to ~0, with finite gradients
        fixed = fixed.masked_fill(mask, torch.finfo(fixed.dtype).min)
        lse = lse.index_copy(0, hit, torch.logsumexp(fixed, dim=1))
    return lse


def next_event_times(timestamps: torch.Tensor, seq_offsets: torch.Tensor, last=None) -> torch.Tensor:
    """``timestamps [L]`` jagged by ``seq_offsets [B+1]`` shifted one event left within each segment; each
    segment's last event takes ``last [B]`` (default: its own timestamp). ``[L]`` int64."""
    ts = timestamps.to(torch.int64)
    out = torch.empty_like(ts)
    if ts.shape[0] == 0:
        return out
    out[:-1] = ts[1:]
    ends = seq_offsets[1:].to(torch.int64)
    nonempty = ends > seq_offsets[:-1].to(torch.int64)
    rows = ends[nonempty] - 1
    out[rows] = ts[rows] if last is None else last.to(device=ts.device, dtype=torch.int64)[nonempty]
    return out
