"""Argument checks every op shares: tensors, scalars, bias tables; each raises a ``TypeError``/``ValueError`` that
names the argument."""

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.int32, torch.int64)


def check_tensor(name, x, *, dims, dtypes, device, kind):
    """``x`` is a tensor of one of ``dtypes`` with ``dims`` dimensions on ``device`` (None: any but meta)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must be {kind} ({names}), got {str(x.dtype).replace('torch.', '')}")
    if x.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(x.shape)}")
    if x.device.type == "meta":
        # fake tensors (torch.compile's tracing) report their real device and pass
        raise ValueError(f"{name} is on the meta device, which holds no values: pass CPU or CUDA tensors")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device} but q is on {device}: all tensors must share one device")


def check_scalars(max_seq_len, max_attn_len, alpha, scale) -> None:
    """The scalar arguments every attention op shares."""
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise ValueError(f"max_seq_len must be a positive int, got {max_seq_len!r}")
    if isinstance(max_attn_len, bool) or not isinstance(max_attn_len, int) or max_attn_len < 0:
        raise ValueError(f"max_attn_len must be an int >= 0 (0: no window), got {max_attn_len!r}")
    for name, x in (("alpha", alpha), ("scale", scale)):
        if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))):
            raise TypeError(f"{name} must be a float, got {type(x).__name__}")


def check_bias_tables(H, max_seq_len, pos_weight, time_weight, time_boundaries, has_timestamps, device,
                      timestamp_names="timestamps"):
    """Shapes, dtypes and devices of the relative-bias tables (shared by every attention op)."""
    if pos_weight is not None:
        check_tensor("pos_weight", pos_weight, dims=2, dtypes=FLOAT_DTYPES, device=device, kind="a floating tensor")
        if pos_weight.shape[0] not in (1, H) or pos_weight.shape[1] != 2 * max_seq_len - 1:
            raise ValueError(
                f"pos_weight must have shape [Hb, 2 * max_seq_len - 1] = [1 or {H}, {2 * max_seq_len - 1}], "
                f"got {tuple(pos_weight.shape)}"
            )
    if time_weight is not None:
        check_tensor("time_weight", time_weight, dims=2, dtypes=FLOAT_DTYPES, device=device, kind="a floating tensor")
        if not has_timestamps or time_boundaries is None:
            raise ValueError(f"time_weight needs {timestamp_names} and time_boundaries")
    if time_boundaries is not None:
        check_tensor("time_boundaries", time_boundaries, dims=1, dtypes=INT_DTYPES, device=device, kind="an integer tensor")
        if time_weight is None:
            raise ValueError("time_boundaries is given without time_weight")
        nb = time_boundaries.shape[0]
        if time_weight.shape[0] not in (1, H) or time_weight.shape[1] != nb + 1:
            raise ValueError(
                f"time_weight must have shape [Hb, len(time_boundaries) + 1] = [1 or {H}, {nb + 1}], "
                f"got {tuple(time_weight.shape)}"
            )
