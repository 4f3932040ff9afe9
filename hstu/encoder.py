from typing import Optional

import torch
from torch import nn

from hstu_kernels import check_hstu_attention_args, check_hstu_cached_attention_args

from .actions import UNKNOWN
from .attention_plan import AttentionPlan
from .bias import DEFAULT_TIME_BOUNDARIES
from .block import HSTUBlock
from .dropout import Dropout
from .embedding import FusedInputEmbedding
from .jagged import inverse_positions
from .kv_cache import KVCache


class HSTUEncoder(nn.Module):
    """Fused (item, action) embedding followed by ``num_layers`` HSTU blocks, jagged-native.

    ``forward(items [L], actions [L], seq_offsets [B+1], timestamps [L], num_targets [B] | None) -> [L, D]``.
    ``forward_padded`` takes ``[B, T]`` tensors and ``lengths [B]`` and returns ``[B, T, D]``.
    ``fused=True`` runs every block's attention on the fastest fused kernel (SiLU attention only).

    Serving (M-FALCON): ``prefill(history) -> KVCache`` encodes histories once, keeping every block's keys and
    values; ``score_candidates(cache, candidates)`` then runs candidate tokens (action UNKNOWN) through every
    block against the cache, in microbatches, with the same result as ``forward`` on history + candidates as
    targets.
    """

    # the unfused SiLU path shares one AttentionPlan per batch across blocks; False: every block calls the op
    # (backend="torch") and recomputes it (bench/bench_train.py times both)
    use_plan = True

    def __init__(
        self,
        num_items: int,
        num_actions: int,
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 1,
        max_seq_len: int = 200,
        dropout: float = 0.2,
        attn_activation: str = "silu",
        max_attn_len: int = 0,
        fused: bool = False,
        *,
        per_head_bias: bool = False,
        time_boundaries=DEFAULT_TIME_BOUNDARIES,
        input_norm: bool = False,
        attn_bias: str = "both",
        use_actions: bool = True,
        input_mode: str = "mlp",
        position_embedding: bool = False,
        item_init_std: float = 0.0,
    ):
        super().__init__()
        if fused and attn_activation != "silu":
            raise ValueError("HSTUEncoder(fused=True) supports attn_activation='silu' only: the fused kernels are SiLU attention")
        self.max_seq_len = max_seq_len
        self.embedding = FusedInputEmbedding(num_items, num_actions, dim, input_mode,
                                             max_seq_len if position_embedding else 0, item_init_std)
        self.input_dropout = Dropout(dropout)
        self.use_actions = use_actions
        self.blocks = nn.ModuleList(
            HSTUBlock(
                dim, num_heads, max_seq_len, dropout, attn_activation=attn_activation, fused=fused,
                max_attn_len=max_attn_len, per_head_bias=per_head_bias, time_boundaries=time_boundaries,
                input_norm=input_norm, attn_bias=attn_bias,
            )
            for _ in range(num_layers)
        )

    @property
    def uses_positions(self) -> bool:
        return self.embedding.position_embedding is not None

    def _embed(self, items: torch.Tensor, actions: torch.Tensor, positions=None) -> torch.Tensor:
        """``positions``: a callable giving the tokens' ``inverse_positions``, called only when the embedding uses
        them (it costs a pass over the offsets)."""
        if not self.use_actions:
            # items only: one action for every token, so the input carries no rating information
            actions = torch.full_like(actions, UNKNOWN)
        pos = positions() if self.uses_positions else None
        return self.input_dropout(self.embedding(items, actions, pos))

    @property
    def item_table(self) -> torch.Tensor:
        """``[num_items + 1, D]``: the item embeddings (row 0 pads)."""
        return self.embedding.item_embedding.weight

    def forward(
        self,
        items: torch.Tensor,
        actions: torch.Tensor,
        seq_offsets: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        num_targets: Optional[torch.Tensor] = None,
        check: bool = True,
        query_timestamps: Optional[torch.Tensor] = None,
        output_rows: Optional[torch.Tensor] = None,
        dense_segments: int = 0,
    ) -> torch.Tensor:
        """``[L, D]`` outputs. ``query_timestamps [L]``: the query side of the time bias (None: ``timestamps``).
        ``output_rows [R]`` (int64 jagged row indices): return only those rows, ``[R, D]``, equal to the full
        output's; the last block then computes attention for them alone (evaluation needs 2 rows a user).
        With ``dense_segments = k > 0`` as well: ``[L, D]`` equal to the full output on the first ``k`` segments
        and on ``output_rows`` (which must lie past them), zero on the other rows, whose last-block attention is
        skipped (a training step needs every row of its retrieval segments, only the targets of its rating
        segments)."""
        if dense_segments and output_rows is None:
            raise ValueError("dense_segments needs output_rows (the rows past them to compute)")
        longest = None
        if check:
            # the offsets, targets and timestamps are the same for every layer: check them once, before the
            # position embedding reads them (a probe of the tokens' count stands in for q, k, v)
            probe = self.item_table.new_zeros((items.shape[0], 1, 1))
            longest = check_hstu_attention_args(
                probe, probe, probe, seq_offsets, self.max_seq_len, timestamps=timestamps,
                query_timestamps=query_timestamps, num_targets=num_targets,
            )
        x = self._embed(items, actions, lambda: inverse_positions(seq_offsets, items.shape[0], num_targets))
        plan = self._plan(seq_offsets, timestamps, num_targets, longest, query_timestamps, dense_segments)
        body = self.blocks if output_rows is None else self.blocks[:-1]
        for block in body:
            x = block(x, seq_offsets, timestamps, num_targets, check=False, plan=plan, query_timestamps=query_timestamps)
        if output_rows is None:
            return x
        output_rows = output_rows.to(device=x.device, dtype=torch.int64)
        if output_rows.numel() and (int(output_rows.min()) < 0 or int(output_rows.max()) >= x.shape[0]):
            raise ValueError(f"output_rows must lie in [0, {x.shape[0]}) (the batch's tokens)")
        n = int(seq_offsets[dense_segments]) if dense_segments else 0
        if dense_segments and output_rows.numel() and int(output_rows.min()) < n:
            raise ValueError("output_rows must lie past the dense segments' rows when dense_segments is given")
        if not self.blocks:
            if not dense_segments:
                return x[output_rows]
            idx = torch.cat([torch.arange(n, device=x.device), output_rows])
            return x.new_zeros(x.shape).index_copy(0, idx, x.index_select(0, idx))
        last = self.blocks[-1]
        if dense_segments:
            return last.forward_partial(x, dense_segments, n, output_rows, seq_offsets, timestamps, num_targets,
                                        plan=plan, query_timestamps=query_timestamps)
        return last.forward_rows(x, output_rows, seq_offsets, timestamps, num_targets, check=False, plan=plan,
                                 query_timestamps=query_timestamps)

    def _plan(self, seq_offsets, timestamps, num_targets, longest, query_timestamps=None,
              head_segments: int = 0) -> Optional[AttentionPlan]:
        """The batch's shared attention plan for the unfused SiLU path (None: the blocks use the op);
        ``head_segments``: the dense segments, which the last block attends alone."""
        first = self.blocks[0]
        if not self.use_plan or first.fused or first.attn_activation != "silu":
            return None
        if longest is None:
            longest = int((seq_offsets[1:] - seq_offsets[:-1]).max()) if seq_offsets.shape[0] > 1 else 0
        kw = first._attn_kwargs(timestamps)
        return AttentionPlan.build(
            seq_offsets, self.max_seq_len, longest, timestamps=timestamps, query_timestamps=query_timestamps,
            time_boundaries=kw.get("time_boundaries"),
            num_targets=num_targets, max_attn_len=first.max_attn_len, with_pos=kw.get("pos_weight") is not None,
            with_time=kw.get("time_weight") is not None, head_segments=head_segments,
        )

    def forward_padded(
        self,
        items: torch.Tensor,
        actions: torch.Tensor,
        lengths: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        num_targets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        def positions():
            history = lengths if num_targets is None else lengths - num_targets
            dist = history[:, None] - torch.arange(items.shape[1], device=items.device)[None, :]
            return dist.clamp(min=0)

        x = self._embed(items, actions, positions)
        for block in self.blocks:
            x = block.forward_padded(x, lengths, timestamps, num_targets)
        return x

    def _require_eval(self, what: str) -> None:
        if self.training:
            raise ValueError(f"HSTUEncoder.{what} is for serving: call .eval() first (dropout would make it random)")

    @torch.no_grad()
    def prefill(
        self,
        items: torch.Tensor,
        actions: torch.Tensor,
        seq_offsets: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        query_timestamps: Optional[torch.Tensor] = None,
    ) -> KVCache:
        """Encode user histories once and keep what candidate scoring needs (eval mode, no autograd).

        Args:
            items, actions: ``[Lh]`` int64 history events, jagged by ``seq_offsets [B+1]``; each history is 0 to
                ``max_seq_len - 1`` long (candidates then sit at position m < max_seq_len; 0: cold start).
            timestamps: ``[Lh]`` int64 seconds, or None for no time bias (then candidates take none either).
            query_timestamps: ``[Lh]`` the history's query side of the time bias (None: ``timestamps``).

        Returns:
            a ``KVCache`` with every block's history keys and values, the offsets, lengths, timestamps and the
            encoder output at each user's last history position (the retrieval user vector; zeros if m = 0).
        """
        self._require_eval("prefill")
        probe = self.item_table.new_zeros((items.shape[0], 1, 1))  # checked before the positions read the offsets
        longest = check_hstu_attention_args(
            probe, probe, probe, seq_offsets, self.max_seq_len, timestamps=timestamps,
            query_timestamps=query_timestamps,
        )
        x = self._embed(items, actions, lambda: inverse_positions(seq_offsets, items.shape[0]))
        if longest >= self.max_seq_len:
            raise ValueError(
                f"prefill: a history has {longest} events; at most max_seq_len - 1 = {self.max_seq_len - 1} fit, "
                "since candidates sit at position m"
            )
        ks, vs = [], []
        for block in self.blocks:
            x, k, v = block.forward_kv(x, seq_offsets, timestamps, None, check=False, query_timestamps=query_timestamps)
            ks.append(k)
            vs.append(v)
        offsets = seq_offsets.to(torch.int64)
        lengths = offsets[1:] - offsets[:-1]
        if x.shape[0] == 0:
            last = x.new_zeros((lengths.shape[0], x.shape[1]))
        else:
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            last = torch.where((lengths > 0)[:, None], x[(offsets[1:] - 1).clamp(min=0)], zero)
        return KVCache(
            k=ks, v=vs, seq_offsets=offsets, lengths=lengths,
            timestamps=None if timestamps is None else timestamps.to(torch.int64), last_output=last, max_len=longest,
        )

    @torch.no_grad()
    def score_candidates(
        self,
        cache: KVCache,
        cand_items: torch.Tensor,
        cand_offsets: torch.Tensor,
        cand_timestamps: Optional[torch.Tensor] = None,
        query_timestamps: Optional[torch.Tensor] = None,
        microbatch_size: Optional[int] = None,
    ) -> torch.Tensor:
        """Encoder outputs of candidate tokens against cached histories (M-FALCON; eval mode, no autograd).

        Each candidate is a target token (its item, action UNKNOWN) at position m (its user's history length):
        it sees the user's whole history (within ``max_attn_len``) and itself, never another candidate, so the
        result equals the candidate rows of ``forward`` on history + candidates with ``num_targets`` = the
        number of candidates, whatever the microbatching. The cache is read, never written.

        Args:
            cache: from ``prefill``.
            cand_items: ``[C]`` int64 item ids, jagged per user by ``cand_offsets [B+1]`` (0 per user allowed).
            cand_timestamps: ``[C]`` int64 seconds, the candidates' own times. Default: the request time, taken as
                each user's last history timestamp (0 for a cold-start user, where it has no effect). Ignored
                with a cache prefilled without timestamps.
            query_timestamps: ``[C]`` the query side of the time bias (default ``cand_timestamps``).
            microbatch_size: b_m, candidates per user per microbatch (None: all at once). Each user's candidates
                are cut into chunks of b_m; microbatch i holds every user's chunk i.

        Returns:
            ``[C, D]`` candidate outputs, in the order of ``cand_items``.
        """
        self._require_eval("score_candidates")
        B = cache.num_users
        if cand_items.dim() != 1:
            raise ValueError(f"cand_items must have shape [C], got {tuple(cand_items.shape)}")
        if cand_offsets.dim() != 1 or cand_offsets.shape[0] != B + 1:
            raise ValueError(
                f"cand_offsets must have shape [B+1] = [{B + 1}] (the cache's users), got {tuple(cand_offsets.shape)}"
            )
        bm = microbatch_size
        if bm is not None and (isinstance(bm, bool) or not isinstance(bm, int) or bm < 1):
            raise ValueError(f"microbatch_size must be a positive int or None, got {microbatch_size!r}")
        C = cand_items.shape[0]
        cand_offsets = cand_offsets.to(torch.int64)
        n_c = cand_offsets[1:] - cand_offsets[:-1]
        # a candidate is a target token: position 0, after the whole history
        x0 = self._embed(cand_items, torch.full_like(cand_items, UNKNOWN), lambda: torch.zeros_like(cand_items))
        ts = qts = None
        if cache.timestamps is not None:
            ts = cand_timestamps
            if ts is None:
                ts = torch.repeat_interleave(cache.request_times(), n_c.clamp(min=0), output_size=C)
            qts = query_timestamps
        elif cand_timestamps is not None or query_timestamps is not None:
            raise ValueError("the cache was prefilled without timestamps: candidates cannot take timestamps")
        if len(self.blocks) == 0:
            return x0
        # one check (one host sync) for every layer and microbatch: offsets, timestamps, history lengths. The
        # probe stands in for q, k, v, which come out of the blocks' projections in the cache's dtype (under
        # autocast the embedding's output may still be fp32)
        probe = x0[:, None, :1].to(cache.k[0].dtype)
        check_hstu_cached_attention_args(
            probe, probe, probe, cand_offsets, cache.k[0][:, :1, :1], cache.v[0][:, :1, :1], cache.seq_offsets,
            self.max_seq_len, timestamps=ts, query_timestamps=qts, cache_timestamps=cache.timestamps,
        )

        def run(rows, offsets):
            pick = (lambda a: a) if rows is None else (lambda a: None if a is None else a[rows])
            x, t, qt = pick(x0), pick(ts), pick(qts)
            for block, k, v in zip(self.blocks, cache.k, cache.v):
                x = block.forward_cached(x, offsets, k, v, cache.seq_offsets, t, qt, cache.timestamps, check=False)
            return x

        most = int(n_c.max()) if B > 0 and C > 0 else 0
        if microbatch_size is None or most <= microbatch_size:
            return run(None, cand_offsets)
        # microbatch i holds candidates [i * b_m, (i + 1) * b_m) of every user, users in order
        nchunks = -(-most // microbatch_size)
        seg = torch.repeat_interleave(torch.arange(B, device=x0.device), n_c, output_size=C)
        chunk = (torch.arange(C, device=x0.device) - cand_offsets[seg]) // microbatch_size
        order = torch.argsort(chunk, stable=True)
        counts = torch.bincount(chunk * B + seg, minlength=nchunks * B).reshape(nchunks, B)
        sizes = counts.sum(1).tolist()
        offsets = torch.zeros(nchunks, B + 1, dtype=torch.int64, device=x0.device)
        torch.cumsum(counts, 1, out=offsets[:, 1:])
        out = x0.new_empty(x0.shape)
        start = 0
        for i, size in enumerate(sizes):
            rows = order[start:start + size]
            out[rows] = run(rows, offsets[i])
            start += size
        return out
