"""The CUDA backend's kernels, run on the CPU through the warp emulator (``csrc/include/hstu/arch/emulation.h``).

The kernel source of ``csrc/include/hstu`` is compiled by g++ with ``-DHSTU_HOST_EMULATION`` into
``tests/ops/cuda_host/kernel_driver.cpp``: every CUDA thread becomes a fiber; ``mma.sync``, ``ldmatrix``, ``cp.async``,
shuffles and barriers are emulated with the PTX fragment layouts; every global access is bounds-checked; shared
memory and outputs start NaN-poisoned. So the tiling, masks, bias staging, fragment bookkeeping, reductions and
deterministic mode are checked here without a GPU. Not checked here: races (racecheck on a GPU), the PTX
itself (the compile check), the fast-math error of ``tanh.approx`` / ``ex2.approx`` (the GPU tier).

The sm90 forward (wgmma / TMA, ``arch/sm90_emulation.h``) runs here too: mbarrier phases, TMA boxes in the
128-byte swizzle layout, wgmma through its shared-memory descriptors, all from the PTX ISA's descriptions.

Every result is held to the GPU tier's rule: error(kernel vs fp64 naive) <= 2 * error(naive op in the same
precision vs fp64 naive) + atol, for the output and all five gradients. Skipped without a host C++ compiler.
"""

import pytest
import torch
from cuda_host import build as cbuild

from hstu_kernels.ops.hstu_attention.naive import naive_hstu_attention
from hstu_kernels.ops.hstu_cached_attention.naive import naive_hstu_cached_attention

pytestmark = pytest.mark.skipif(cbuild.host_compiler() is None, reason="no host C++ compiler (g++ or $CXX)")

from cuda_host import emulated  # noqa: E402

ATOL = {torch.float16: 1e-4, torch.bfloat16: 1e-3}
GRADS = ("q", "k", "v", "pos_weight", "time_weight")


def make_batch(lengths, *, H=2, D=64, max_seq_len=None, targets=None, Hb=None, boundaries=(3, 20, 90), pos=True,
               time=True, qts=False, t0=0, t_range=200, ts_dtype=torch.int64, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = sum(lengths)
    if max_seq_len is None:
        ts = targets if targets is not None else [0] * len(lengths)
        max_seq_len = max([1] + [min(n - 1, n - t) + 1 for n, t in zip(lengths, ts)])
    Hb = H if Hb is None else Hb
    batch = dict(
        q=torch.randn(L, H, D, generator=g).to(dtype),
        k=torch.randn(L, H, D, generator=g).to(dtype),
        v=torch.randn(L, H, D, generator=g).to(dtype),
        seq_offsets=torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0),
        max_seq_len=max_seq_len,
    )
    if pos:
        batch["pos_weight"] = (0.5 * torch.randn(Hb, 2 * max_seq_len - 1, generator=g)).to(dtype)
    if time:
        batch["timestamps"] = (t0 + torch.randint(0, t_range, (L,), generator=g)).to(ts_dtype)
        if qts:
            batch["query_timestamps"] = (t0 + torch.randint(0, t_range, (L,), generator=g)).to(ts_dtype)
        batch["time_boundaries"] = torch.tensor(boundaries, dtype=torch.int64)
        batch["time_weight"] = (0.5 * torch.randn(Hb, len(boundaries) + 1, generator=g)).to(dtype)
    if targets is not None:
        batch["num_targets"] = torch.tensor(targets, dtype=torch.int64)
    return batch


def naive_with_grads(batch, grad_out, cast, **options):
    inputs = {n: (x.detach().to(cast).requires_grad_(True) if n in GRADS else x) for n, x in batch.items()}
    out = naive_hstu_attention(**inputs, **options)
    leaves = [n for n in GRADS if n in inputs]
    grads = torch.autograd.grad(out, [inputs[n] for n in leaves], grad_out.to(cast))
    return out, dict(zip(leaves, grads))


def assert_close_to_naive(name, got, low, want, dtype):
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert torch.isfinite(got).all(), f"{name}: non-finite values (an element the kernels never wrote?)"
    if want.numel() == 0:
        return
    err = (got.double() - want).abs().max().item()
    low_err = (low.double() - want).abs().max().item()
    atol = ATOL[dtype] * max(1.0, want.abs().max().item())
    assert err <= 2 * low_err + atol, f"{name}: error {err:.3g} > 2 x naive's {low_err:.3g} + {atol:.3g}"


def emulated_args(batch):
    return {n: x for n, x in batch.items() if n not in ("q", "k", "v", "seq_offsets", "max_seq_len")}


def check_attention(batch, *, deterministic=False, need_dpw=True, need_dtw=True, views=None, **options):
    """Forward and backward kernels against the naive op under the 2x rule."""
    dtype = batch["q"].dtype
    g = torch.Generator().manual_seed(7)
    grad_out = torch.randn(batch["q"].shape, generator=g).to(dtype)
    q, k, v = views if views is not None else (batch["q"], batch["k"], batch["v"])
    extra = dict(emulated_args(batch), **options)
    out = emulated.attention_fwd(q, k, v, batch["seq_offsets"], batch["max_seq_len"], **extra)
    dq, dk, dv, dpw, dtw = emulated.attention_bwd(grad_out, q, k, v, batch["seq_offsets"], batch["max_seq_len"],
                                                  deterministic=deterministic, need_dpw=need_dpw,
                                                  need_dtw=need_dtw, **extra)
    got = {"q": dq, "k": dk, "v": dv}
    if "pos_weight" in batch:
        assert (dpw is None) == (not need_dpw)
        if dpw is not None:
            got["pos_weight"] = dpw.to(dtype)  # the backend returns table gradients in the table's dtype
    if "time_weight" in batch:
        assert (dtw is None) == (not need_dtw)
        if dtw is not None:
            got["time_weight"] = dtw.to(dtype)
    low_out, low_grads = naive_with_grads(batch, grad_out, dtype, **options)
    ref_out, ref_grads = naive_with_grads(batch, grad_out, torch.float64, **options)
    assert_close_to_naive("out", out, low_out, ref_out, dtype)
    for name, x in got.items():
        assert_close_to_naive(f"d{name}", x, low_grads[name], ref_grads[name], dtype)
    return out, got


LENGTHS = [5, 0, 70, 33, 1, 130]  # empty, single, past one and two blocks, not multiples of any block
TARGETS = [2, 0, 3, 33, 1, 9]  # one sequence all targets, one a single target
OPTIONS = {
    "plain": dict(pos=False, time=False),
    "pos": dict(time=False),
    "time": dict(pos=False),
    "both": dict(),
    "shared_tables": dict(Hb=1, qts=True),
    "targets": dict(targets=TARGETS),
    "window": dict(window=5),
    "targets_window": dict(targets=TARGETS, window=37, qts=True),
    "all_shared": dict(targets=TARGETS, window=4, Hb=1, qts=True),
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_attention_options_d64(option):
    o = dict(OPTIONS[option])
    window = o.pop("window", 0)
    check_attention(make_batch(LENGTHS, **o), alpha=0.7, max_attn_len=window)


@pytest.mark.parametrize("option", ["plain", "both", "targets_window", "all_shared"])
def test_attention_options_d128(option):
    o = dict(OPTIONS[option])
    window = o.pop("window", 0)
    check_attention(make_batch([70, 3, 129], targets=[5, 0, 100] if "targets" in o else None, D=128,
                               **{k: x for k, x in o.items() if k != "targets"}), max_attn_len=window)


@pytest.mark.parametrize("D", [64, 128])
def test_fp16(D):
    check_attention(make_batch([40, 77], targets=[3, 7], D=D, dtype=torch.float16, qts=True), max_attn_len=30)


@pytest.mark.parametrize("D", [64, 128])
def test_deterministic_mode(D):
    batch = make_batch([90, 12, 140], targets=[4, 0, 20], D=D, qts=True, Hb=1 if D == 64 else None)
    out, det = check_attention(batch, deterministic=True, max_attn_len=50)
    _, nondet = check_attention(batch, deterministic=False, max_attn_len=50)
    for name in det:  # same math, other summation orders
        torch.testing.assert_close(det[name].float(), nondet[name].float(), rtol=2e-2, atol=2e-2)


def check_sm90_forward(batch, **options):
    """The sm90 (wgmma / TMA) forward against the naive op under the 2x rule, and against the sm80 forward."""
    dtype = batch["q"].dtype
    extra = dict(emulated_args(batch), **options)
    args = (batch["q"], batch["k"], batch["v"], batch["seq_offsets"], batch["max_seq_len"])
    out = emulated.attention_fwd(*args, family="sm90", **extra)
    with torch.no_grad():
        low = naive_hstu_attention(**batch, **options)
        want = naive_hstu_attention(**{n: (x.double() if n in GRADS else x) for n, x in batch.items()}, **options)
    assert_close_to_naive("out (sm90)", out, low, want, dtype)
    sm80 = emulated.attention_fwd(*args, **extra)
    # the same products and fp32 sums per 16-wide k step: equal to the last bit when both kernels' key tiles start
    # at the same offsets mod 16, else (windows: each query block starts its keys at p(m0) - window) the sums
    # group the terms differently, within one rounding of the output
    assert torch.equal(out, sm80) or options.get("max_attn_len", 0) > 0, "sm90 and sm80 differ without a window"
    torch.testing.assert_close(out.float(), sm80.float(), rtol=2**-7, atol=1e-6)
    return out


@pytest.mark.parametrize("option", list(OPTIONS))
def test_sm90_forward_options_d64(option):
    o = dict(OPTIONS[option])
    window = o.pop("window", 0)
    check_sm90_forward(make_batch(LENGTHS, **o), alpha=0.7, max_attn_len=window)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sm90_forward_d128_long(dtype):
    # 300 and 257 rows: three 128-query blocks, key tiles past the sequence end, targets past max_seq_len
    batch = make_batch([300, 1, 257, 0], targets=[40, 0, 130, 0], D=128, max_seq_len=200, qts=True, dtype=dtype)
    check_sm90_forward(batch, max_attn_len=0)
    check_sm90_forward(batch, max_attn_len=70)


def test_sm90_forward_wraps_the_stage_ring():
    # 700 rows: 6 query blocks and up to 6 key tiles of 128, so both stages are reused (empty-barrier parity 1)
    check_sm90_forward(make_batch([700, 5], targets=[9, 0], max_seq_len=700, qts=True), max_attn_len=0)
    check_sm90_forward(make_batch([700], max_seq_len=700, pos=False, time=False), max_attn_len=300)


def test_sm90_forward_ignores_the_next_sequences_rows():
    # a sequence's last key tile reads the next sequence's rows: infinities there must not reach its output
    batch = make_batch([70, 200], targets=[3, 0])
    args = emulated_args(batch)
    clean = emulated.attention_fwd(batch["q"], batch["k"], batch["v"], batch["seq_offsets"], batch["max_seq_len"],
                                   family="sm90", **args)
    k, v = batch["k"].clone(), batch["v"].clone()
    k[70:], v[70:] = float("inf"), float("-inf")
    dirty = emulated.attention_fwd(batch["q"], k, v, batch["seq_offsets"], batch["max_seq_len"], family="sm90",
                                   **args)
    assert torch.equal(dirty[:70], clean[:70])


def test_sm90_forward_falls_back_on_layouts_tma_refuses():
    # k shared by the heads through a zero head stride: no tensor map, so the sm80 forward runs (same result)
    batch = make_batch([90, 33], targets=[2, 1])
    batch["k"] = batch["k"][:, :1].expand(-1, batch["q"].shape[1], -1)
    check_sm90_forward(batch, max_attn_len=0)


def test_sm90_forward_strided_rows():
    # q, k, v as views into one [L, 3, H, D] buffer: the TMA descriptors' row stride is 3 H D
    batch = make_batch([90, 140], targets=[3, 7], qts=True)
    fused = torch.stack([batch["q"], batch["k"], batch["v"]], dim=1)
    check_sm90_forward(dict(batch, q=fused[:, 0], k=fused[:, 1], v=fused[:, 2]), max_attn_len=0)


@pytest.mark.parametrize("window", [0, 3])
def test_sequences_longer_than_max_seq_len(window):
    # n = 150 > max_seq_len = 90 with 70 targets: target-only query blocks and key blocks
    check_attention(make_batch([150, 23, 9], targets=[70, 3, 0], max_seq_len=90), max_attn_len=window)


@pytest.mark.parametrize("boundaries", [(), tuple(range(0, 160, 10)), (-5, 0, 7, 2**31 + 5, 2**32 - 2, 2**32 - 1,
                                                                      2**33)],
                         ids=["none", "sixteen", "extremes"])
def test_time_boundaries(boundaries):
    # timestamps spread over 2^34 s: differences above 2^32 take the 64-bit path of the bucket count
    batch = make_batch([41, 66], boundaries=boundaries, qts=True, t0=2**20, t_range=2**34 if len(boundaries) != 16
                       else 200)
    check_attention(batch, max_attn_len=0)


def test_time_gaps_at_the_32_bit_edges():
    """Gaps of exactly 2^32 - 2, 2^32 - 1, 2^32 and 2^33 against boundaries at those values (the 32-bit chain
    saturates at 2^32 - 2; larger boundaries are counted in 64 bits)."""
    edges = [0, 2**32 - 2, 2**32 - 1, 2**32, 2**33, 2**31 + 5, 1, 2**33 + 1]
    batch = make_batch([len(edges) * 9], boundaries=(0, 7, 2**31 + 5, 2**32 - 2, 2**32 - 1, 2**32, 2**33), Hb=1)
    batch["timestamps"] = torch.tensor(edges * 9, dtype=torch.int64)
    check_attention(batch)


def test_unix_timestamps_int32():
    batch = make_batch([60, 17], boundaries=(3600, 86400, 604800, 2592000), t0=1_700_000_000, t_range=5_000_000,
                       ts_dtype=torch.int32, targets=[4, 2])
    check_attention(batch)


def test_alpha_scale_and_windows():
    batch = make_batch([26, 3, 80], targets=[3, 0, 80])  # the last sequence is all targets (u = 0)
    check_attention(batch, alpha=0.37, scale=0.5, max_attn_len=1)
    check_attention(batch, alpha=-1.3, max_attn_len=500)  # a window longer than every sequence


def test_table_gradients_not_needed():
    batch = make_batch([70, 20], targets=[2, 1])
    check_attention(batch, need_dpw=False, need_dtw=False)
    check_attention(batch, deterministic=True, need_dpw=False, need_dtw=True)


def test_strided_inputs():
    """q, k, v as slices of one fused [L, 3, H, D] projection (row stride 3 H D)."""
    batch = make_batch([45, 70], targets=[1, 5])
    fused = torch.stack([batch["q"], batch["k"], batch["v"]], dim=1)
    views = (fused[:, 0], fused[:, 1], fused[:, 2])
    assert views[0].stride(0) == 3 * 2 * 64
    check_attention(batch, views=views, max_attn_len=9)


# ---------------------------------------------------------------------------------------------------------------
# cached (m-falcon) scoring
# ---------------------------------------------------------------------------------------------------------------
def make_cached(cands, hists, *, H=2, D=64, max_seq_len=None, Hb=None, pos=True, time=True, qts=False,
                boundaries=(3, 20, 90), t_range=200, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    C, Lh = sum(cands), sum(hists)
    max_seq_len = max_seq_len or max(hists + [0]) + 1
    Hb = H if Hb is None else Hb

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    batch = dict(q=rnd(C, H, D), k=rnd(C, H, D), v=rnd(C, H, D),
                 cand_offsets=torch.tensor([0] + list(cands)).cumsum(0), k_cache=rnd(Lh, H, D),
                 v_cache=rnd(Lh, H, D), cache_offsets=torch.tensor([0] + list(hists)).cumsum(0),
                 max_seq_len=max_seq_len)
    if pos:
        batch["pos_weight"] = (0.5 * torch.randn(Hb, 2 * max_seq_len - 1, generator=g)).to(dtype)
    if time:
        batch["timestamps"] = torch.randint(0, t_range, (C,), generator=g)
        batch["cache_timestamps"] = torch.randint(0, t_range, (Lh,), generator=g)
        if qts:
            batch["query_timestamps"] = torch.randint(0, t_range, (C,), generator=g)
        batch["time_boundaries"] = torch.tensor(boundaries, dtype=torch.int64)
        batch["time_weight"] = (0.5 * torch.randn(Hb, len(boundaries) + 1, generator=g)).to(dtype)
    return batch


def check_cached(batch, **options):
    dtype = batch["q"].dtype
    fixed = {n: x for n, x in batch.items() if n not in ("q", "k", "v", "cand_offsets", "k_cache", "v_cache",
                                                          "cache_offsets", "max_seq_len")}
    args = [batch[n] for n in ("q", "k", "v", "cand_offsets", "k_cache", "v_cache", "cache_offsets", "max_seq_len")]
    out = emulated.cached_fwd(*args, **fixed, **options)
    low = naive_hstu_cached_attention(*args, **fixed, **options)
    ref_args = [x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in args]
    ref_fixed = {n: (x.double() if x.is_floating_point() else x) for n, x in fixed.items()}
    ref = naive_hstu_cached_attention(*ref_args, **ref_fixed, **options)
    assert_close_to_naive("out", out, low, ref, dtype)


CACHED_OPTIONS = {
    "plain": dict(pos=False, time=False),
    "both": dict(),
    "shared_qts": dict(Hb=1, qts=True),
}


@pytest.mark.parametrize("window", [0, 7])
@pytest.mark.parametrize("option", list(CACHED_OPTIONS))
def test_cached_options(option, window):
    # a cold-start user (no history), one without candidates, more candidates than one block, long histories
    batch = make_cached([3, 70, 0, 1, 20], [40, 150, 9, 0, 64], **CACHED_OPTIONS[option])
    check_cached(batch, alpha=0.8, max_attn_len=window)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cached_d128(dtype):
    check_cached(make_cached([5, 66], [130, 17], D=128, dtype=dtype, qts=True), max_attn_len=100)
