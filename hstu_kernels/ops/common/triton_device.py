"""``@triton.jit`` device helpers every kernel shares: sequence bounds, tile masks, the SiLU gate, time-bias buckets.

Imported by the kernel modules only (it imports Triton).
"""

import triton
import triton.language as tl


@triton.jit
def sigmoid(x, FAST: tl.constexpr):
    if FAST:
        # 1 MUFU op instead of exp + reciprocal; |rel err| ~ 2^-11, used for bf16 inputs on GPU only
        t = tl.inline_asm_elementwise(
            "tanh.approx.f32 $0, $1;", "=f,f", [x * 0.5], dtype=tl.float32, is_pure=True, pack=1
        )
        return 0.5 * t + 0.5
    else:
        return tl.sigmoid(x)


@triton.jit
def segment(Offsets, b):
    """(first row as int64, length as int32) of segment ``b`` of a jagged layout with ``Offsets [B+1]``."""
    start = tl.load(Offsets + b).to(tl.int64)
    return start, (tl.load(Offsets + b + 1).to(tl.int64) - start).to(tl.int32)


@triton.jit
def history_length(NumTargets, b, n, HAS_TARGETS: tl.constexpr):
    """u = n - num_targets[b]: the position every target of sequence ``b`` sits at."""
    if HAS_TARGETS:
        return n - tl.load(NumTargets + b).to(tl.int32)
    else:
        return n


@triton.jit
def tile_mask(ok, offs_d, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """``[rows, BLOCK_D]`` load/store mask: the rows in ``ok`` and, when D is padded to BLOCK_D, the real columns."""
    if BLOCK_D != D:
        return ok[:, None] & (offs_d[None, :] < D)
    else:
        return ok[:, None]


@triton.jit
def time_gap(tq2, tk2, TIME_I32: tl.constexpr):
    """|query_ts - key_ts|: uint32 on the 32-bit path (exact for timestamps in [0, 2^31)), else int64."""
    if TIME_I32:
        return tl.abs(tq2 - tk2).to(tl.uint32)
    else:
        return tl.abs(tq2.to(tl.int64) - tk2.to(tl.int64))


@triton.jit
def boundary(TB, t, TIME_I32: tl.constexpr):
    b = tl.load(TB + t)
    if TIME_I32:
        b = b.to(tl.uint32)  # the host clamped the boundaries to [0, 2^32 - 1]
    return b


@triton.jit
def time_bias(dt, TW_h, TB, NUM_BOUNDARIES: tl.constexpr, TIME_I32: tl.constexpr):
    """time_weight[h', bucket(dt)] with bucket = number of boundaries <= dt, as a chain of selects."""
    tb = tl.zeros(dt.shape, dtype=tl.float32) + tl.load(TW_h).to(tl.float32)
    for t in tl.static_range(NUM_BOUNDARIES):
        tb = tl.where(dt >= boundary(TB, t, TIME_I32), tl.load(TW_h + t + 1).to(tl.float32), tb)
    return tb


@triton.jit
def program_block(Offsets, block, H, BLOCK: tl.constexpr):
    """This program's segment ``b`` and head ``h`` (grid axis 0 is ``b * H + h``), the segment's first row and
    length, and the first in-segment row of its block number ``block``."""
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    start, n = segment(Offsets, b)
    return b, pid_bh % H, start, n, block * BLOCK


@triton.jit
def block_rows(start, n, BLOCK: tl.constexpr):
    """The rows of a block from ``start`` in a segment of length ``n``: (indices, in-segment mask, block end)."""
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < n, tl.minimum(start + BLOCK, n)
