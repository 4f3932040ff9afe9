"""The CUDA kernels run on the CPU: ``kernel_driver.cpp`` built with ``-DHSTU_HOST_EMULATION`` (the kernel source
of ``csrc/include/hstu`` through the warp emulator of ``arch/emulation.h``).

Each function takes the op's tensors (bf16 / fp16 q, k, v on the CPU), prepares them the way the torch launcher
``csrc/hstu_attention/launch.cu`` does (int32 offsets and targets, int64 timestamps, fp32 tables with a head
stride of 0 when shared), writes them to a scratch directory, runs the driver and reads the results back.
"""

import subprocess
import tempfile
from pathlib import Path

import torch

from . import build as cbuild

_EXE = None


def driver():
    global _EXE
    if _EXE is None:
        _EXE = cbuild.build("kernel_driver.cpp", flags=("-DHSTU_HOST_EMULATION",), name="kernel_driver")
    return _EXE


def _raw(x: torch.Tensor) -> bytes:
    """The elements a strided view spans, from its first element (the driver indexes them with the strides)."""
    if x.numel() == 0:
        return b""
    span = 1 + sum((s - 1) * st for s, st in zip(x.shape, x.stride()))
    flat = torch.as_strided(x, (span,), (1,))
    if flat.dtype in (torch.bfloat16, torch.float16):
        flat = flat.view(torch.int16)
    return flat.contiguous().numpy().tobytes()


class _Problem:
    def __init__(self, op, dtype, head_dim):
        self.dir = Path(tempfile.mkdtemp(prefix="hstu-emu-"))
        self.meta = {"op": op, "dtype": {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype],
                     "head_dim": head_dim}

    def tensor(self, name, x, strides=False):
        if x is None:
            return
        (self.dir / f"{name}.bin").write_bytes(_raw(x))
        if strides:
            self.meta[f"{name}_row_stride"] = x.stride(0)
            self.meta[f"{name}_head_stride"] = x.stride(1)

    def bias(self, pos_weight, time_weight, time_boundaries, max_seq_len):
        self.meta["max_seq_len"] = max_seq_len
        if pos_weight is not None:
            self.tensor("pos_weight", pos_weight.float().contiguous())
            self.meta["pos_heads"] = pos_weight.shape[0]
            self.meta["pos_head_stride"] = pos_weight.shape[1] if pos_weight.shape[0] > 1 else 0
        if time_weight is not None:
            self.tensor("time_weight", time_weight.float().contiguous())
            self.tensor("time_boundaries", time_boundaries.to(torch.int64).contiguous())
            self.meta["time_heads"] = time_weight.shape[0]
            self.meta["time_head_stride"] = time_weight.shape[1] if time_weight.shape[0] > 1 else 0
            self.meta["num_boundaries"] = time_boundaries.shape[0]

    def run(self, timeout=1800):
        (self.dir / "meta.txt").write_text("".join(f"{k} {v}\n" for k, v in self.meta.items()))
        res = subprocess.run([str(driver()), str(self.dir)], capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"kernel driver failed ({res.returncode}):\n{res.stderr[-4000:]}")

    def output(self, name, shape, dtype):
        data = bytearray((self.dir / f"{name}.out.bin").read_bytes())
        if dtype in (torch.bfloat16, torch.float16):
            t = torch.frombuffer(data, dtype=torch.int16).view(dtype) if data else torch.empty(0, dtype=dtype)
        else:
            t = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        return t.reshape(shape).clone()


def _attention_problem(op, q, k, v, seq_offsets, max_seq_len, alpha, scale, timestamps, query_timestamps,
                       pos_weight, time_weight, time_boundaries, num_targets, max_attn_len):
    L, H, D = q.shape
    pr = _Problem(op, q.dtype, D)
    lengths = seq_offsets[1:] - seq_offsets[:-1]
    pr.meta.update(L=L, heads=H, batch=seq_offsets.shape[0] - 1,
                   max_len=int(lengths.max()) if lengths.numel() else 0, max_attn_len=max_attn_len,
                   alpha=repr(float(alpha)), scale=repr(float(1.0 / max_seq_len if scale is None else scale)))
    for name, x in (("q", q), ("k", k), ("v", v)):
        pr.tensor(name, x, strides=True)
    pr.tensor("seq_offsets", seq_offsets.to(torch.int32))
    if num_targets is not None:
        pr.tensor("num_targets", num_targets.to(torch.int32))
    if time_weight is not None:
        pr.tensor("timestamps", timestamps.to(torch.int64).contiguous())
        if query_timestamps is not None:
            pr.tensor("query_timestamps", query_timestamps.to(torch.int64).contiguous())
    pr.bias(pos_weight, time_weight, time_boundaries, max_seq_len)
    return pr


def attention_fwd(q, k, v, seq_offsets, max_seq_len, *, alpha=1.0, scale=None, timestamps=None,
                  query_timestamps=None, pos_weight=None, time_weight=None, time_boundaries=None, num_targets=None,
                  max_attn_len=0, family="sm80"):
    """``[L, H, D]`` output of the forward kernel of ``family``: "sm80" (mma.sync) or "sm90" (wgmma / TMA)."""
    if family not in ("sm80", "sm90"):
        raise ValueError(f"family must be 'sm80' or 'sm90', got {family!r}")
    pr = _attention_problem("fwd" if family == "sm80" else "fwd_sm90", q, k, v, seq_offsets, max_seq_len, alpha, scale, timestamps, query_timestamps,
                            pos_weight, time_weight, time_boundaries, num_targets, max_attn_len)
    pr.run()
    return pr.output("out", q.shape, q.dtype)


def attention_bwd(grad_out, q, k, v, seq_offsets, max_seq_len, *, alpha=1.0, scale=None, timestamps=None,
                  query_timestamps=None, pos_weight=None, time_weight=None, time_boundaries=None, num_targets=None,
                  max_attn_len=0, deterministic=False, need_dpw=True, need_dtw=True):
    """(dq, dk, dv, d pos_weight or None, d time_weight or None) of the backward kernels; table gradients fp32."""
    pr = _attention_problem("bwd", q, k, v, seq_offsets, max_seq_len, alpha, scale, timestamps, query_timestamps,
                            pos_weight, time_weight, time_boundaries, num_targets, max_attn_len)
    pr.tensor("dout", grad_out, strides=False)
    pr.meta.update(do_row_stride=grad_out.stride(0), do_head_stride=grad_out.stride(1),
                   deterministic=int(deterministic), compute_dpos=int(need_dpw), compute_dtime=int(need_dtw))
    pr.run()
    dq, dk, dv = (pr.output(name, q.shape, q.dtype) for name in ("dq", "dk", "dv"))
    dpw = pr.output("dpos_weight", pos_weight.shape, torch.float32) if pos_weight is not None and need_dpw else None
    dtw = (pr.output("dtime_weight", time_weight.shape, torch.float32)
           if time_weight is not None and need_dtw else None)
    return dq, dk, dv, dpw, dtw


def cached_fwd(q, k, v, cand_offsets, k_cache, v_cache, cache_offsets, max_seq_len, *, alpha=1.0, scale=None,
               timestamps=None, query_timestamps=None, cache_timestamps=None, pos_weight=None, time_weight=None,
               time_boundaries=None, max_attn_len=0):
    """``[C, H, D]`` output of the cached scoring kernel."""
    C, H, D = q.shape
    pr = _Problem("cached", q.dtype, D)
    counts = cand_offsets[1:] - cand_offsets[:-1]
    pr.meta.update(C=C, heads=H, batch=cand_offsets.shape[0] - 1,
                   max_cands=int(counts.max()) if counts.numel() else 0, max_attn_len=max_attn_len,
                   alpha=repr(float(alpha)), scale=repr(float(1.0 / max_seq_len if scale is None else scale)))
    for name, x in (("q", q), ("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        pr.tensor(name, x, strides=True)
    pr.tensor("cand_offsets", cand_offsets.to(torch.int32))
    pr.tensor("cache_offsets", cache_offsets.to(torch.int32))
    if time_weight is not None:
        pr.tensor("timestamps", timestamps.to(torch.int64).contiguous())
        pr.tensor("cache_timestamps", cache_timestamps.to(torch.int64).contiguous())
        if query_timestamps is not None:
            pr.tensor("query_timestamps", query_timestamps.to(torch.int64).contiguous())
    pr.bias(pos_weight, time_weight, time_boundaries, max_seq_len)
    pr.run()
    return pr.output("out", q.shape, q.dtype)
