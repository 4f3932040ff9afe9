"""Argument checks for ``hstu_attention``: clear ``TypeError``/``ValueError`` naming the argument.

Shape, dtype and device checks cost nothing. Checks on tensor values (offsets, targets, positions, timestamps,
boundaries) are computed on the tensors' device and read back in one host synchronisation; that same read
returns the batch's longest sequence, which the backends need anyway.
"""

from typing import Optional

import torch

from ..common.checks import FLOAT_DTYPES, INT_DTYPES, check_bias_tables, check_scalars, check_tensor

def check_hstu_attention_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float = 1.0,
    scale: Optional[float] = None,
    timestamps: Optional[torch.Tensor] = None,
    query_timestamps: Optional[torch.Tensor] = None,
    pos_weight: Optional[torch.Tensor] = None,
    time_weight: Optional[torch.Tensor] = None,
    time_boundaries: Optional[torch.Tensor] = None,
    num_targets: Optional[torch.Tensor] = None,
    max_attn_len: int = 0,
    check_values: bool = True,
) -> Optional[int]:
    """Validate every argument of ``hstu_attention``; return the longest sequence length (None if not checked)."""
    check_tensor("q", q, dims=3, dtypes=FLOAT_DTYPES, device=None, kind="a floating tensor")
    dev = q.device
    check_tensor("k", k, dims=3, dtypes=FLOAT_DTYPES, device=dev, kind="a floating tensor")
    check_tensor("v", v, dims=3, dtypes=FLOAT_DTYPES, device=dev, kind="a floating tensor")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape [L, H, Dqk] = {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:2] != q.shape[:2]:
        raise ValueError(f"v must have shape [L, H, Dv] with q's L, H = {tuple(q.shape[:2])}, got {tuple(v.shape)}")
    L, H = q.shape[0], q.shape[1]
    check_tensor("seq_offsets", seq_offsets, dims=1, dtypes=INT_DTYPES, device=dev, kind="an integer tensor")
    if seq_offsets.shape[0] < 1:
        raise ValueError("seq_offsets must have B+1 >= 1 entries, got an empty tensor")
    B = seq_offsets.shape[0] - 1
    check_scalars(max_seq_len, max_attn_len, alpha, scale)

    for name, x in (("timestamps", timestamps), ("query_timestamps", query_timestamps)):
        if x is not None:
            check_tensor(name, x, dims=1, dtypes=INT_DTYPES, device=dev, kind="an integer tensor of seconds")
            if x.shape[0] != L:
                raise ValueError(f"{name} must have shape [L] = [{L}], got {tuple(x.shape)}")
    if query_timestamps is not None and timestamps is None:
        raise ValueError("query_timestamps needs timestamps (the keys' times) too")
    if num_targets is not None:
        check_tensor("num_targets", num_targets, dims=1, dtypes=INT_DTYPES, device=dev, kind="an integer tensor")
        if num_targets.shape[0] != B:
            raise ValueError(f"num_targets must have shape [B] = [{B}], got {tuple(num_targets.shape)}")
    check_bias_tables(H, max_seq_len, pos_weight, time_weight, time_boundaries, timestamps is not None, dev)
    if not check_values:
        return None

    # every value check below is a device tensor; one .tolist() reads them all back
    offsets = seq_offsets.to(torch.int64)
    lengths = offsets[1:] - offsets[:-1]
    zero = torch.zeros((), dtype=torch.bool, device=dev)
    flags = {
        "seq_offsets[0] != 0": offsets[0] != 0,
        f"seq_offsets[-1] != L = {L}": offsets[-1] != L,
        "seq_offsets decreases somewhere": (lengths < 0).any() if B > 0 else zero,
    }
    if num_targets is not None and B > 0:
        t = num_targets.to(torch.int64)
        flags["num_targets has a value < 0 or > its sequence's length"] = ((t < 0) | (t > lengths)).any()
        top = torch.minimum(lengths - 1, lengths - t)
    else:
        top = lengths - 1
    if B > 0:
        flags[f"a position p(i) >= max_seq_len = {max_seq_len}"] = (top >= max_seq_len).any()
    for name, x in (("timestamps", timestamps), ("query_timestamps", query_timestamps)):
        if x is not None and L > 0:
            flags[f"{name} has a negative value"] = (x < 0).any()
    if time_boundaries is not None and time_boundaries.shape[0] > 1:
        flags["time_boundaries is not sorted"] = (time_boundaries[1:] < time_boundaries[:-1]).any()
    longest = lengths.max() if B > 0 else torch.zeros((), dtype=torch.int64, device=dev)
    values = torch.stack([f.to(torch.int64) for f in flags.values()] + [longest]).tolist()
    bad = [msg for msg, hit in zip(flags, values[:-1]) if hit]
    if bad:
        detail = _explain(bad[0], offsets, lengths, num_targets, max_seq_len)
        raise ValueError(f"hstu_attention: {bad[0]}{detail}")
    return int(values[-1])


def _explain(msg, offsets, lengths, num_targets, max_seq_len) -> str:
    """Point at the first offending sequence: runs only on the error path, so its syncs cost nothing."""
    if msg.startswith("seq_offsets decreases"):
        b = int(torch.nonzero(lengths < 0)[0])
        return f" (seq_offsets[{b}] = {int(offsets[b])} > seq_offsets[{b + 1}] = {int(offsets[b + 1])})"
    if msg.startswith("num_targets"):
        t = num_targets.to(torch.int64)
        b = int(torch.nonzero((t < 0) | (t > lengths))[0])
        return f" (sequence {b}: length {int(lengths[b])}, num_targets {int(t[b])})"
    if msg.startswith("a position"):
        t = torch.zeros_like(lengths) if num_targets is None else num_targets.to(torch.int64)
        b = int(torch.nonzero(torch.minimum(lengths - 1, lengths - t) >= max_seq_len)[0])
        return (
            f" (sequence {b}: length {int(lengths[b])}, num_targets {int(t[b])}; positions must stay below "
            "max_seq_len: n <= max_seq_len without targets, n - num_targets < max_seq_len with them)"
        )
    return ""
