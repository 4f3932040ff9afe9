from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from hstu_kernels import (
    check_hstu_attention_args,
    fast_backends_available,
    fused_backend,
    fused_cached_backend,
    hstu_attention,
    hstu_cached_attention,
    naive_hstu_attention_padded,
)

from .bias import DEFAULT_TIME_BOUNDARIES, RelativeAttentionBias
from .config import ATTN_BIASES
from .dropout import Dropout
from .jagged import jagged_to_padded, lengths_to_offsets, padded_to_jagged
from .softmax_attention import softmax_attention, softmax_attention_padded


def require_fused_backend(owner: str) -> None:
    """Raise a clear ``ValueError`` when no fused backend could run on this machine."""
    reasons = fast_backends_available()
    if all(reasons.values()):
        detail = "; ".join(f"{name}: {', '.join(r)}" for name, r in reasons.items())
        raise ValueError(f"{owner}(fused=True): no fused backend is available ({detail}); use fused=False")


class HSTUBlock(nn.Module):
    """One HSTU layer (pointwise projection, SiLU attention with relative bias, pointwise transform).

    ``U, V, Q, K = split(SiLU(Linear(D, 4D)(x)))``; ``A = attention(Q, K, V)`` (multi-head, with this block's
    ``RelativeAttentionBias``); ``y = x + dropout(Linear(D, D)(LayerNorm(A) * U))``.

    Args:
        dim: D, divisible by num_heads.
        num_heads: H; each head has D / H dims.
        max_seq_len: N, sizes the position table and the attention scale 1 / N.
        dropout: on the block's output before the residual.
        alpha: multiplies q . k.
        attn_activation: "silu" (HSTU) or "softmax" (ablation: row-wise softmax, no 1/N scale).
        fused: use the fastest fused kernel instead of the PyTorch reference (same parameters, same results).
        max_attn_len: 0 for full causal attention, else a local window on positions.
        per_head_bias: one bias table per head instead of one shared by all heads.
        time_boundaries: time-bucket boundaries in seconds.
        input_norm: LayerNorm ``x`` before the uvqk projection (the residual stream stays unnormalised).
        attn_bias: which relative bias the scores get: "both" (position and time), "position", "time" or "none"
            (the ablations; the unused table stays in the state dict, untrained).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        max_seq_len: int = 200,
        dropout: float = 0.2,
        alpha: float = 1.0,
        attn_activation: str = "silu",
        fused: bool = False,
        *,
        max_attn_len: int = 0,
        per_head_bias: bool = False,
        time_boundaries=DEFAULT_TIME_BOUNDARIES,
        input_norm: bool = False,
        attn_bias: str = "both",
    ):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        if attn_activation not in ("silu", "softmax"):
            raise ValueError(f"attn_activation must be 'silu' or 'softmax', got {attn_activation!r}")
        if fused and attn_activation != "silu":
            raise ValueError("fused=True supports attn_activation='silu' only (the fused kernels are SiLU attention)")
        if attn_bias not in ATTN_BIASES:
            raise ValueError(f"attn_bias must be one of {', '.join(ATTN_BIASES)}, got {attn_bias!r}")
        if fused:
            require_fused_backend(type(self).__name__)
        self.attn_bias = attn_bias
        self.dim, self.num_heads, self.max_seq_len = dim, num_heads, max_seq_len
        self.alpha, self.attn_activation, self.fused, self.max_attn_len = alpha, attn_activation, fused, max_attn_len
        self.input_norm = nn.LayerNorm(dim) if input_norm else None
        self.uvqk = nn.Linear(dim, 4 * dim)
        self.bias = RelativeAttentionBias(max_seq_len, num_heads if per_head_bias else 1, time_boundaries)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = Dropout(dropout)

    def project(self, x: torch.Tensor, parts: str = "uvqk"):
        """``x [..., D]`` -> ``u [..., D]`` and ``v, q, k [..., H, D / H]``: the block's pointwise projection,
        or only the ``parts`` named (e.g. "vk": rows that serve only as keys need no u or q)."""
        D = self.dim
        h = x if self.input_norm is None else self.input_norm(x)
        if parts == "uvqk":
            y = self.uvqk(h)
        else:
            pick = ["uvqk".index(c) for c in parts]
            y = F.linear(h, self.uvqk.weight.view(4, D, D)[pick].reshape(-1, D),
                         self.uvqk.bias.view(4, D)[pick].reshape(-1))
        heads = (*x.shape[:-1], self.num_heads, D // self.num_heads)
        chunks = F.silu(y).chunk(len(parts), dim=-1)
        return tuple(t if c == "u" else t.reshape(heads) for c, t in zip(parts, chunks))

    def _attn_kwargs(self, timestamps):
        kw = {"alpha": self.alpha, "max_attn_len": self.max_attn_len}
        if self.attn_bias in ("both", "position"):
            kw["pos_weight"] = self.bias.pos_weight
        if timestamps is not None and self.attn_bias in ("both", "time"):
            kw.update(timestamps=timestamps, time_weight=self.bias.time_weight, time_boundaries=self.bias.time_boundaries)
        return kw

    def finish(self, x: torch.Tensor, u: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """``x + dropout(Linear(LayerNorm(attn) * u))``: the block's output from its attention ``[..., H, Dv]``."""
        return x + self.dropout(self.out(self.norm(attn.reshape(u.shape)) * u))

    def forward(
        self,
        x: torch.Tensor,
        seq_offsets: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        num_targets: Optional[torch.Tensor] = None,
        check: bool = True,
        plan=None,
        query_timestamps: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``x [L, D]`` jagged by ``seq_offsets [B+1]``; ``timestamps [L]`` int64 seconds (None: no time
        bias); ``num_targets [B]`` (None: no targets). Returns ``[L, D]``. ``plan``: the batch's
        ``hstu.attention_plan.AttentionPlan`` (built for these arguments), which the unfused SiLU path then uses
        instead of recomputing the mask and bias indices. ``query_timestamps [L]``: the query side of the time
        bias (None: ``timestamps``)."""
        return self.forward_kv(x, seq_offsets, timestamps, num_targets, check, plan, query_timestamps)[0]

    def forward_kv(
        self,
        x: torch.Tensor,
        seq_offsets: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        num_targets: Optional[torch.Tensor] = None,
        check: bool = True,
        plan=None,
        query_timestamps: Optional[torch.Tensor] = None,
    ):
        """``forward`` that also returns this block's keys and values: ``(y [L, D], k [L, H, d], v [L, H, d])``."""
        u, v, q, k = self.project(x)
        kw = self._attn_kwargs(timestamps)
        if "timestamps" in kw and query_timestamps is not None:
            kw["query_timestamps"] = query_timestamps
        if self._uses_plan(plan):
            attn = plan.attention(q, k, v, **self._plan_tables(kw))
        elif self.attn_activation == "softmax":
            longest = check_hstu_attention_args(
                q, k, v, seq_offsets, self.max_seq_len, num_targets=num_targets, check_values=check, **kw
            )
            attn = softmax_attention(
                q, k, v, seq_offsets, self.max_seq_len, num_targets=num_targets, max_len=longest, **kw
            )
        else:
            backend = "torch"
            if self.fused:
                backend = fused_backend(q, k, v, kw.get("pos_weight"), kw.get("time_weight"), kw.get("time_boundaries"))
            attn = hstu_attention(
                q, k, v, seq_offsets, self.max_seq_len, num_targets=num_targets, backend=backend, check=check, **kw
            )
        return self.finish(x, u, attn), k, v

    def _uses_plan(self, plan) -> bool:
        """Whether this block attends through the batch's ``AttentionPlan`` (the unfused SiLU path)."""
        return plan is not None and self.attn_activation == "silu" and not self.fused

    def _plan_tables(self, kw: dict) -> dict:
        """The ``AttentionPlan`` attention keywords from ``_attn_kwargs``'s."""
        return dict(alpha=self.alpha, pos_weight=kw.get("pos_weight"), time_weight=kw.get("time_weight"))

    def forward_rows(
        self,
        x: torch.Tensor,
        rows: torch.Tensor,
        seq_offsets: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        num_targets: Optional[torch.Tensor] = None,
        check: bool = True,
        plan=None,
        query_timestamps: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``forward(...)[rows]`` (``rows [R]`` int64 jagged row indices) -> ``[R, D]``. With a ``plan`` on the
        unfused SiLU path only those rows query the attention (the others still give their keys and values);
        otherwise the whole block runs and the rows are picked from it."""
        if not self._uses_plan(plan):
            return self.forward(x, seq_offsets, timestamps, num_targets, check, plan, query_timestamps)[rows]
        v, k = self.project(x, "vk")
        u, q = self.project(x[rows], "uq")
        attn = plan.attention_rows(q, k, v, rows, **self._plan_tables(self._attn_kwargs(timestamps)))
        return self.finish(x[rows], u, attn)

    def forward_partial(
        self,
        x: torch.Tensor,
        dense_segments: int,
        dense_tokens: int,
        rows: torch.Tensor,
        seq_offsets: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        num_targets: Optional[torch.Tensor] = None,
        plan=None,
        query_timestamps: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``[L, D]``: ``forward``'s outputs on the first ``dense_segments`` segments (jagged rows
        ``[0, dense_tokens)``) and on ``rows`` (all at or past ``dense_tokens``), zero elsewhere (the training
        step: every retrieval-segment row has a label, a rating segment only its targets). With a ``plan`` on the
        unfused SiLU path the other rows' attention is never computed; otherwise the whole block runs."""
        n = dense_tokens
        idx = torch.cat([torch.arange(n, device=x.device), rows])
        if not self._uses_plan(plan):
            y = self.forward(x, seq_offsets, timestamps, num_targets, False, plan, query_timestamps)
            return y.new_zeros(x.shape).index_copy(0, idx, y.index_select(0, idx))
        # the dense rows need all of u, v, q, k; the others serve as keys (v, k), and only ``rows`` query (u, q)
        u_d, v_d, q_d, k_d = self.project(x[:n])
        v_r, k_r = self.project(x[n:], "vk")
        u_s, q_s = self.project(x.index_select(0, rows), "uq")
        k, v = torch.cat([k_d, k_r]), torch.cat([v_d, v_r])
        tables = self._plan_tables(self._attn_kwargs(timestamps))
        dense = plan.head(dense_segments, n).attention(q_d, k_d, v_d, **tables)
        sparse = plan.attention_rows(q_s, k, v, rows, **tables)
        y = self.finish(x.index_select(0, idx), torch.cat([u_d, u_s]), torch.cat([dense, sparse]))
        return y.new_zeros(x.shape).index_copy(0, idx, y)

    def forward_cached(
        self,
        x: torch.Tensor,
        cand_offsets: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        cache_offsets: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        query_timestamps: Optional[torch.Tensor] = None,
        cache_timestamps: Optional[torch.Tensor] = None,
        check: bool = True,
    ) -> torch.Tensor:
        """Candidate tokens through this block against cached history keys/values (M-FALCON).

        ``x [C, D]`` candidates jagged per user by ``cand_offsets [B+1]``; ``k_cache, v_cache [Lh, H, d]`` this
        block's history keys/values jagged by ``cache_offsets [B+1]``; ``timestamps, query_timestamps [C]`` and
        ``cache_timestamps [Lh]`` (all None: no time bias). Equal to the candidate rows of ``forward`` on each
        user's history followed by its candidates as targets. With ``fused=True`` the attention runs on the
        Triton cached kernel (forward only: call it under ``torch.no_grad()``). Returns ``[C, D]``.
        """
        if self.attn_activation != "silu":
            raise ValueError("HSTUBlock.forward_cached supports attn_activation='silu' only")
        u, v, q, k = self.project(x)
        kw = self._attn_kwargs(timestamps)
        if "timestamps" in kw:
            kw.update(query_timestamps=query_timestamps, cache_timestamps=cache_timestamps)
        backend = "torch"
        if self.fused:
            backend = fused_cached_backend(
                q, k, v, k_cache, v_cache, kw.get("pos_weight"), kw.get("time_weight"), kw.get("time_boundaries")
            )
        attn = hstu_cached_attention(
            q, k, v, cand_offsets, k_cache, v_cache, cache_offsets, self.max_seq_len, backend=backend, check=check,
            **kw,
        )
        return self.finish(x, u, attn)

    def forward_padded(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        num_targets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Padded convenience path: ``x [B, T, D]``, ``lengths [B]``, ``timestamps [B, T]``. Rows at or past
        each length are ignored on input and zero on output. Returns ``[B, T, D]``."""
        if self.fused:
            offsets = lengths_to_offsets(lengths)
            ts = None if timestamps is None else padded_to_jagged(timestamps, lengths)
            y = self.forward(padded_to_jagged(x, lengths), offsets, ts, num_targets)
            return jagged_to_padded(y, offsets, x.shape[1])[0]
        u, v, q, k = self.project(x)
        attend = softmax_attention_padded if self.attn_activation == "softmax" else naive_hstu_attention_padded
        attn = attend(q, k, v, lengths, self.max_seq_len, num_targets=num_targets, **self._attn_kwargs(timestamps))
        tok = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None])[..., None]
        return torch.where(tok, self.finish(x, u, attn), torch.zeros((), dtype=x.dtype, device=x.device))
