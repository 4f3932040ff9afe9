"""Argument checks for ``hstu_cached_attention``: clear ``TypeError``/``ValueError`` naming the argument.

As for ``hstu_attention``: shape, dtype and device checks cost nothing; the value checks run on the tensors'
device and are read back in one host synchronisation, which also returns the sizes the backends need.
"""

from typing import Optional, Tuple

import torch

from ..common.checks import FLOAT_DTYPES, INT_DTYPES, check_bias_tables, check_scalars, check_tensor


def check_hstu_cached_attention_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cand_offsets: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float = 1.0,
    scale: Optional[float] = None,
    timestamps: Optional[torch.Tensor] = None,
    query_timestamps: Optional[torch.Tensor] = None,
    cache_timestamps: Optional[torch.Tensor] = None,
    pos_weight: Optional[torch.Tensor] = None,
    time_weight: Optional[torch.Tensor] = None,
    time_boundaries: Optional[torch.Tensor] = None,
    max_attn_len: int = 0,
    check_values: bool = True,
) -> Optional[Tuple[int, int]]:
    """Validate every argument of ``hstu_cached_attention``; return (most candidates, longest history) of any
    user, or None when the value checks are skipped."""
    check_tensor("q", q, dims=3, dtypes=FLOAT_DTYPES, device=None, kind="a floating tensor")
    dev = q.device
    for name, x in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(name, x, dims=3, dtypes=FLOAT_DTYPES, device=dev, kind="a floating tensor")
    if any(x.dtype != q.dtype for x in (k, v, k_cache, v_cache)):
        raise TypeError(
            f"q, k, v, k_cache, v_cache must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}, "
            f"{k_cache.dtype}, {v_cache.dtype}"
        )
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape [C, H, Dqk] = {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:2] != q.shape[:2]:
        raise ValueError(f"v must have shape [C, H, Dv] with q's C, H = {tuple(q.shape[:2])}, got {tuple(v.shape)}")
    C, H, Dqk, Dv = q.shape[0], q.shape[1], q.shape[2], v.shape[2]
    if k_cache.shape[1:] != (H, Dqk):
        raise ValueError(f"k_cache must have shape [Lh, H, Dqk] = [Lh, {H}, {Dqk}], got {tuple(k_cache.shape)}")
    if v_cache.shape != (k_cache.shape[0], H, Dv):
        raise ValueError(
            f"v_cache must have shape [Lh, H, Dv] = [{k_cache.shape[0]}, {H}, {Dv}], got {tuple(v_cache.shape)}"
        )
    Lh = k_cache.shape[0]
    for name, x in (("cand_offsets", cand_offsets), ("cache_offsets", cache_offsets)):
        check_tensor(name, x, dims=1, dtypes=INT_DTYPES, device=dev, kind="an integer tensor")
        if x.shape[0] < 1:
            raise ValueError(f"{name} must have B+1 >= 1 entries, got an empty tensor")
    if cache_offsets.shape != cand_offsets.shape:
        raise ValueError(
            f"cache_offsets and cand_offsets must both have B+1 entries, got {cache_offsets.shape[0]} and "
            f"{cand_offsets.shape[0]}"
        )
    B = cand_offsets.shape[0] - 1
    check_scalars(max_seq_len, max_attn_len, alpha, scale)

    for name, x, n in (
        ("timestamps", timestamps, C), ("query_timestamps", query_timestamps, C), ("cache_timestamps", cache_timestamps, Lh)
    ):
        if x is not None:
            check_tensor(name, x, dims=1, dtypes=INT_DTYPES, device=dev, kind="an integer tensor of seconds")
            if x.shape[0] != n:
                dim = "Lh" if name == "cache_timestamps" else "C"
                raise ValueError(f"{name} must have shape [{dim}] = [{n}], got {tuple(x.shape)}")
    if query_timestamps is not None and timestamps is None:
        raise ValueError("query_timestamps needs timestamps (the candidates' own times) too")
    if (timestamps is None) != (cache_timestamps is None):
        raise ValueError("timestamps and cache_timestamps must be given together (the candidates' and the history's times)")
    check_bias_tables(
        H, max_seq_len, pos_weight, time_weight, time_boundaries, timestamps is not None, dev,
        timestamp_names="timestamps, cache_timestamps",
    )
    if not check_values:
        return None

    # every value check below is a device tensor; one .tolist() reads them all back
    zero = torch.zeros((), dtype=torch.bool, device=dev)
    flags, lens = {}, {}
    for name, offsets, total in (("cand_offsets", cand_offsets, C), ("cache_offsets", cache_offsets, Lh)):
        o = offsets.to(torch.int64)
        lens[name] = o[1:] - o[:-1]
        flags[f"{name}[0] != 0"] = o[0] != 0
        flags[f"{name}[-1] != {'C' if name == 'cand_offsets' else 'Lh'} = {total}"] = o[-1] != total
        flags[f"{name} decreases somewhere"] = (lens[name] < 0).any() if B > 0 else zero
    m = lens["cache_offsets"]
    if B > 0:
        flags[f"a history is longer than max_seq_len - 1 = {max_seq_len - 1} (candidates sit at position m)"] = (
            m >= max_seq_len
        ).any()
    for name, x in (("timestamps", timestamps), ("query_timestamps", query_timestamps), ("cache_timestamps", cache_timestamps)):
        if x is not None and x.shape[0] > 0:
            flags[f"{name} has a negative value"] = (x < 0).any()
    if time_boundaries is not None and time_boundaries.shape[0] > 1:
        flags["time_boundaries is not sorted"] = (time_boundaries[1:] < time_boundaries[:-1]).any()
    none = torch.zeros((), dtype=torch.int64, device=dev)
    most = [lens["cand_offsets"].max() if B > 0 else none, m.max() if B > 0 else none]
    values = torch.stack([f.to(torch.int64) for f in flags.values()] + most).tolist()
    bad = [msg for msg, hit in zip(flags, values[:-2]) if hit]
    if bad:
        detail = ""
        if bad[0].startswith("a history"):
            b = int(torch.nonzero(m >= max_seq_len)[0])
            detail = f" (user {b}: history length {int(m[b])})"
        elif "decreases" in bad[0]:
            name = bad[0].split()[0]
            b = int(torch.nonzero(lens[name] < 0)[0])
            detail = f" (at user {b})"
        raise ValueError(f"hstu_cached_attention: {bad[0]}{detail}")
    return int(values[-2]), int(values[-1])
