"""What the Triton backends can take, and their fp32 setting, without importing Triton (``import hstu_kernels``
must work where Triton is absent).

Under ``TRITON_INTERPRET=1`` the backends take CPU tensors (fp32, fp16; not bf16: the interpreter's bf16 dot is
wrong); otherwise they need CUDA tensors. Head dims 1..256, up to 16 time boundaries.
"""

import importlib.util
import os
from typing import List, Optional

import torch

Tensor = torch.Tensor

MAX_BOUNDARIES = 16
MAX_HEAD_DIM = 256
TRITON_MISSING = importlib.util.find_spec("triton") is None
# Triton decides interpretation when a kernel is decorated: read the variable as the kernels' module will
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")

FP32_PRECISIONS = ("ieee", "tf32", "tf32x3")
_fp32_precision = "ieee"


def set_fp32_precision(precision: str) -> None:
    """How fp32 q/k/v products run: "ieee" (exact, the default), "tf32" or "tf32x3" (faster, on GPUs)."""
    global _fp32_precision
    if precision not in FP32_PRECISIONS:
        raise ValueError(f"fp32 precision must be one of {', '.join(FP32_PRECISIONS)}; got {precision!r}")
    _fp32_precision = precision


def get_fp32_precision() -> str:
    return _fp32_precision


def triton_reasons(q, k, v, pos_weight=None, time_weight=None, time_boundaries=None) -> List[str]:
    """The reasons a Triton backend cannot take these inputs (empty: it can)."""
    reasons = []
    if TRITON_MISSING:
        reasons.append("triton is not installed")
    if q.device.type == "cpu":
        if not INTERPRET:
            reasons.append("needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    elif q.device.type != "cuda":
        reasons.append(f"needs CUDA tensors, got {q.device.type} tensors")
    tables = [t for t in (pos_weight, time_weight) if t is not None]
    if q.dtype == torch.float64 or any(t.dtype == torch.float64 for t in tables):
        reasons.append("float64 not supported")
    if INTERPRET and q.device.type == "cpu" and q.dtype == torch.bfloat16:
        reasons.append("bfloat16 not supported under the Triton interpreter (its bf16 dot is wrong)")
    dqk, dv = q.shape[-1], v.shape[-1]
    if not (1 <= dqk <= MAX_HEAD_DIM and 1 <= dv <= MAX_HEAD_DIM):
        reasons.append(f"head dim D not supported (Dqk = {dqk}, Dv = {dv}; 1..{MAX_HEAD_DIM} work)")
    if time_boundaries is not None and time_boundaries.shape[0] > MAX_BOUNDARIES:
        reasons.append(f"more than {MAX_BOUNDARIES} time boundaries ({time_boundaries.shape[0]})")
    return reasons


def last_dim_unit(x: Optional[Tensor]) -> Optional[Tensor]:
    return x if x is None or x.stride(-1) == 1 else x.contiguous()
