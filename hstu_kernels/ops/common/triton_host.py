"""Host-side utilities of every Triton kernel: interpreter detection, launching (autotuned or one config),
autotune keys, config pruning by shared memory, ``HSTU_AUTOTUNE``, time boundaries. Imports Triton."""

import os

import torch
import triton


def _interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (decided when the kernels were decorated)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs, "runtime"):
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


INTERPRET = _interpreting()
# Under the interpreter there is no autotuning: one fixed small config per kernel. On a GPU, setting an override
# (BLOCK_M, BLOCK_N, num_warps, num_stages) skips autotuning too: tests use it to run every config. The backward
# needs BLOCK_M <= BLOCK_N.
INTERPRET_CONFIG = (16, 16, 4, 1)


def launch(raw_kernel, tuned_kernel, override, grid_len_key, B, H, max_len, args, meta):
    """Run ``tuned_kernel`` (autotuned) or, under the interpreter or with an override, ``raw_kernel`` with one
    config. ``grid_len_key`` names the block size that tiles the sequence (BLOCK_M forward, BLOCK_N backward)."""
    config = INTERPRET_CONFIG if INTERPRET and override is None else override
    if config is None:
        tuned_kernel[lambda META: (B * H, triton.cdiv(max_len, META[grid_len_key]))](*args, **meta)
        return
    bm, bn, warps, stages = config
    blocks = {"BLOCK_M": bm, "BLOCK_N": bn}
    grid = (B * H, triton.cdiv(max_len, blocks[grid_len_key]))
    if INTERPRET:
        raw_kernel[grid](*args, **meta, **blocks)
    else:
        raw_kernel[grid](*args, **meta, **blocks, num_warps=warps, num_stages=stages)


# the autotune key entries every kernel shares (head dims and the bias / window flags)
SHARED_KEY = ["BLOCK_DQK", "BLOCK_DV", "HAS_WINDOW", "HAS_POS", "HAS_TIME", "NUM_BOUNDARIES"]


def autotuned(kernel, configs, key, prune, **kwargs):
    """``kernel`` autotuned over ``configs`` keyed on ``key + SHARED_KEY``, pruned by ``prune(configs,
    named_args, **kwargs)`` before timing (see ``prune_configs``)."""
    return triton.autotune(configs=configs, key=key + SHARED_KEY, prune_configs_by={"early_config_prune": prune},
                           **kwargs)(kernel)


def next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def length_bucket(max_len: int) -> int:
    """Autotune key for the batch's longest sequence: the next power of two (at least 16)."""
    return max(16, next_pow2(max_len))


SMEM_LIMIT = 232448  # bytes of shared memory a block may use on H100/H200 (227 KiB)


def smem_limit(tensor) -> int:
    try:
        return int(torch.cuda.get_device_properties(tensor.device).shared_memory_per_block_optin)
    except Exception:  # noqa: BLE001 - CPU tensors, older torch
        return SMEM_LIMIT


def tile_smem(c, dqk, dv, elem):
    """Shared memory of a forward-style config: a q tile and ``num_stages`` k/v tiles (matches ptxas for bf16,
    D = 128 on sm_90; over-estimates D = 256)."""
    bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
    return elem * (bm * (2 * dqk + dv) + c.num_stages * bn * (dqk + dv)) + 1024


AUTOTUNE_MODES = ("full", "quick")


def autotune_mode() -> str:
    """``HSTU_AUTOTUNE``: "full" (the default) tunes over every kept config; "quick" takes the first kept config
    of each key without timing any, so a first run on a fresh machine compiles one config per kernel and shape
    class (a first-contact GPU session has minutes, and each compile takes seconds)."""
    mode = os.environ.get("HSTU_AUTOTUNE", "full").strip().lower() or "full"
    if mode not in AUTOTUNE_MODES:
        raise ValueError(f"HSTU_AUTOTUNE must be one of {', '.join(AUTOTUNE_MODES)}; got {mode!r}")
    return mode


def prune_configs(configs, args, wanted, smem):
    """The configs ``wanted`` keeps that fit in shared memory (only the first in quick mode); else the one needing
    the least."""
    limit = smem_limit(args["Q"])
    fits = [c for c in configs if smem(c) <= limit]
    out = [c for c in fits if wanted(c)] or [min(configs, key=smem)]
    return out[:1] if autotune_mode() == "quick" else out


def prepare_time_boundaries(time_boundaries, time_i32: bool) -> torch.Tensor:
    """int64 boundaries; on the 32-bit path clamped to [0, 2^32 - 1] so uint32 compares stay exact."""
    tb = time_boundaries.to(torch.int64)
    if time_i32:
        tb = tb.clamp(0, 2**32 - 1)
    return tb.contiguous()
