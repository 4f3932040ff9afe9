"""The Triton backend of ``hstu_cached_attention`` against the naive op computed in float64.

CPU tier (``TRITON_INTERPRET=1``, set by ``tests/conftest.py`` without CUDA): small jagged batches in fp32 (one
fp16 case): users with 0, 1, odd and longer-than-a-block histories, 0, 1 and several blocks of candidates, every
option alone and combined (window, shared / per-head tables, int32 / int64 timestamps, separate query times,
no bias), head dims that are not powers of two, NaN-poisoned ``torch.empty``, ``torch.compile``, the dispatch
rules (no backward), and ``HSTUEncoder(fused=True).score_candidates`` against the unfused full forward.

GPU tier (``@pytest.mark.gpu``): M-FALCON sizes (histories up to 199, 1024 candidates per user, D = 64 and 128)
in bf16/fp16/fp32 under the 2x rule, every autotune config, ``backend="auto"``.
"""

import pytest
import torch

pytest.importorskip("triton")

from hstu.actions import NUM_ACTIONS, UNKNOWN
from hstu.encoder import HSTUEncoder
from hstu.jagged import lengths_to_offsets
from hstu_kernels import hstu_cached_attention
from hstu_kernels.ops.hstu_attention import triton_fwd
from hstu_kernels.ops.hstu_cached_attention import (
    backend_reasons,
    choose_backend,
    fused_backend,
    naive_hstu_cached_attention,
)

INTERPRET = triton_fwd.INTERPRET
HAS_CUDA = torch.cuda.is_available()
cpu_tier = pytest.mark.skipif(not INTERPRET, reason="the CPU tier runs the kernels under TRITON_INTERPRET=1")
F64 = torch.float64


def offsets(lengths, device="cpu"):
    return lengths_to_offsets(torch.tensor(lengths, dtype=torch.int64)).to(device)


def make_case(hist, cands, *, N=None, H=2, D=16, Dv=None, Hb=None, pos=True, time=True, qts=False,
              ts_dtype=torch.int64, boundaries=(3, 20, 90), window=0, dtype=torch.float32, device="cpu", seed=0):
    """Arguments of ``hstu_cached_attention`` (built on the CPU from ``seed``, then moved)."""
    g = torch.Generator().manual_seed(seed)
    N = max(hist) + 1 if N is None else N
    Dv, Hb = D if Dv is None else Dv, H if Hb is None else Hb
    Lh, C = sum(hist), sum(cands)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    a = dict(q=r(C, H, D), k=r(C, H, D), v=r(C, H, Dv), cand_offsets=offsets(cands), k_cache=r(Lh, H, D),
             v_cache=r(Lh, H, Dv), cache_offsets=offsets(hist), max_seq_len=N, alpha=0.8, max_attn_len=window)
    if pos:
        a["pos_weight"] = 0.5 * r(Hb, 2 * N - 1)
    if time:
        a["timestamps"] = torch.randint(0, 200, (C,), generator=g).to(ts_dtype)
        a["cache_timestamps"] = torch.randint(0, 200, (Lh,), generator=g).to(ts_dtype)
        if qts:
            a["query_timestamps"] = torch.randint(0, 200, (C,), generator=g).to(ts_dtype)
        a["time_weight"] = 0.5 * r(Hb, len(boundaries) + 1)
        a["time_boundaries"] = torch.tensor(boundaries, dtype=torch.int64)
    for name in ("q", "k", "v", "k_cache", "v_cache"):
        a[name] = a[name].to(dtype)
    return {n: (x.to(device) if isinstance(x, torch.Tensor) else x) for n, x in a.items()}


def reference(a, dtype=F64):
    """The naive op with the float tensors cast to ``dtype`` (float64: the reference)."""
    b = {n: (x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x) for n, x in a.items()}
    return naive_hstu_cached_attention(**b)


def check(a, atol=2e-5, rtol=2e-5):
    with torch.no_grad():
        got = hstu_cached_attention(**a, backend="triton")
    assert got.dtype == a["q"].dtype and got.shape == (a["q"].shape[0], a["q"].shape[1], a["v"].shape[2])
    want = reference(a)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol)
    return got


# lengths: cold start, one event, odd, a block and a bit (block 16 under the interpreter)
HIST = [0, 1, 7, 17, 33, 5]
CANDS = [3, 1, 0, 18, 2, 35]


# ---------------------------------------------------------------------------------------------------------------
# CPU tier
# ---------------------------------------------------------------------------------------------------------------
@cpu_tier
@pytest.mark.parametrize("option", [
    dict(),
    dict(pos=False, time=False),
    dict(time=False),
    dict(pos=False),
    dict(Hb=1),
    dict(window=4),
    dict(window=20, Hb=1, qts=True),
    dict(qts=True, ts_dtype=torch.int32),
    dict(N=50, window=1),
])
def test_cpu_options(poisoned_empty, option):
    check(make_case(HIST, CANDS, **option))


@cpu_tier
@pytest.mark.parametrize("dims", [(12, 12), (16, 24), (32, 8)])
def test_cpu_head_dims(dims):
    D, Dv = dims
    check(make_case([3, 20], [17, 4], D=D, Dv=Dv, H=1, seed=1))


@cpu_tier
def test_cpu_edge_batches(poisoned_empty):
    # no candidates at all; only cold-start users; one user, one candidate
    for hist, cands in (([4, 2], [0, 0]), ([0, 0], [2, 5]), ([9], [1]), ([0], [0])):
        a = make_case(hist, cands, N=12)
        with torch.no_grad():
            got = hstu_cached_attention(**a, backend="triton")
        torch.testing.assert_close(got.double(), reference(a), atol=2e-5, rtol=2e-5)
    # an empty batch (B = 0)
    a = make_case([], [], N=4)
    with torch.no_grad():
        assert hstu_cached_attention(**a, backend="triton").shape == (0, 2, 16)


@cpu_tier
def test_cpu_fp16_within_twice_naive_error():
    a = make_case(HIST, CANDS, dtype=torch.float16, seed=2)
    with torch.no_grad():
        got = hstu_cached_attention(**a, backend="triton")
    want = reference(a)
    low = reference(a, torch.float16)  # the naive op computes in fp32 and rounds to fp16
    err, low_err = (got.double() - want).abs().max(), (low.double() - want).abs().max()
    assert got.dtype == torch.float16 and err <= 2 * low_err + 1e-3


@cpu_tier
def test_cpu_check_false_and_strided_inputs():
    a = make_case(HIST, CANDS)
    want = reference(a)
    with torch.no_grad():
        got = hstu_cached_attention(**a, backend="triton", check=False)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)
    # q, k, v as slices of one fused projection (unit last-dim stride, larger row stride)
    fused = torch.cat([a["q"], a["k"], a["v"]], dim=-1)
    b = dict(a, q=fused[..., :16], k=fused[..., 16:32], v=fused[..., 32:])
    with torch.no_grad():
        got = hstu_cached_attention(**b, backend="triton")
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)


@cpu_tier
def test_cpu_torch_compile_fullgraph():
    a = make_case([5, 9], [3, 20])
    tensors = {n: x for n, x in a.items() if isinstance(x, torch.Tensor)}
    scalars = {n: x for n, x in a.items() if not isinstance(x, torch.Tensor)}

    def f(**t):
        return hstu_cached_attention(**t, **scalars, backend="triton", check=False)

    with torch.no_grad():
        out = torch.compile(f, fullgraph=True, backend="aot_eager")(**tensors)
    torch.testing.assert_close(out.double(), reference(a), atol=2e-5, rtol=2e-5)


@cpu_tier
def test_dispatch_rules():
    a = make_case([3], [2])
    # CPU tensors: "auto" takes the naive op even when the interpreter could run Triton
    assert choose_backend("auto", a["q"], a["k"], a["v"], a["k_cache"], a["v_cache"]) == "torch"
    assert fused_backend(a["q"], a["k"], a["v"], a["k_cache"], a["v_cache"]) == "triton"
    # no backward: with autograd recording, triton refuses and no fused backend remains
    q = a["q"].clone().requires_grad_()
    with pytest.raises(ValueError, match="'triton' cannot take these inputs.*no backward.*torch.no_grad"):
        hstu_cached_attention(**dict(a, q=q), backend="triton")
    with pytest.raises(ValueError, match="no fused backend"):
        fused_backend(q, a["k"], a["v"], a["k_cache"], a["v_cache"])
    with torch.no_grad():
        hstu_cached_attention(**dict(a, q=q), backend="triton")  # fine without autograd
    with pytest.raises(ValueError, match="backend must be one of"):
        hstu_cached_attention(**a, backend="fast")
    reasons = backend_reasons(a["q"].double(), a["k"], a["v"])
    assert reasons["torch"] == [] and "float64 not supported" in reasons["triton"]


@cpu_tier
@pytest.mark.parametrize("window", [0, 3])
def test_cpu_fused_encoder_score_candidates(window):
    """HSTUEncoder(fused=True): prefill (Triton attention) + score_candidates (Triton cached kernel) equals the
    unfused encoder's full forward on history + candidates as targets, computed in float64."""
    torch.manual_seed(0)
    hist, cands, N = [4, 0, 1, 19], [5, 3, 0, 17], 24
    fused = HSTUEncoder(40, NUM_ACTIONS, dim=32, num_layers=2, num_heads=2, max_seq_len=N, dropout=0.0,
                        max_attn_len=window, fused=True, per_head_bias=True, time_boundaries=(5, 20, 60)).eval()
    with torch.no_grad():
        for block in fused.blocks:
            block.bias.pos_weight.normal_()
            block.bias.time_weight.normal_()
    plain = HSTUEncoder(40, NUM_ACTIONS, dim=32, num_layers=2, num_heads=2, max_seq_len=N, dropout=0.0,
                        max_attn_len=window, per_head_bias=True, time_boundaries=(5, 20, 60)).double().eval()
    plain.load_state_dict(fused.state_dict())
    g = torch.Generator().manual_seed(1)
    Lh, C = sum(hist), sum(cands)
    h_items, c_items = torch.randint(1, 41, (Lh,), generator=g), torch.randint(1, 41, (C,), generator=g)
    h_act = torch.randint(2, NUM_ACTIONS, (Lh,), generator=g)
    h_ts, c_ts = torch.randint(0, 100, (Lh,), generator=g), torch.randint(0, 100, (C,), generator=g)
    cache = fused.prefill(h_items, h_act, offsets(hist), h_ts)
    got = fused.score_candidates(cache, c_items, offsets(cands), c_ts, microbatch_size=7)

    parts, idx, pos, oh, oc = {"i": [], "a": [], "t": []}, [], 0, 0, 0
    for m, n in zip(hist, cands):
        parts["i"] += [h_items[oh:oh + m], c_items[oc:oc + n]]
        parts["a"] += [h_act[oh:oh + m], torch.full((n,), UNKNOWN)]
        parts["t"] += [h_ts[oh:oh + m], c_ts[oc:oc + n]]
        idx += range(pos + m, pos + m + n)
        pos, oh, oc = pos + m + n, oh + m, oc + n
    with torch.no_grad():
        want = plain(torch.cat(parts["i"]), torch.cat(parts["a"]), offsets([m + n for m, n in zip(hist, cands)]),
                     torch.cat(parts["t"]), num_targets=torch.tensor(cands))[idx]
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# GPU tier
# ---------------------------------------------------------------------------------------------------------------
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="needs a CUDA device (and TRITON_INTERPRET unset)")


def mfalcon_case(users, hist_len, cands, D, dtype, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, hist_len + 1, (users,), generator=g).tolist()
    hist[0], hist[-1] = 0, hist_len  # a cold-start user and a full history
    ncand = [cands] * (users - 1) + [1]
    return make_case(hist, ncand, N=hist_len + 1, H=kw.pop("H", 1), D=D, dtype=dtype, device="cuda", seed=seed,
                     **kw)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("D,H,window", [(64, 1, 0), (128, 2, 50), (32, 4, 0)])
def test_gpu_two_x_rule(poisoned_empty, dtype, D, H, window):
    a = mfalcon_case(32, 199, 1024, D, dtype, H=H, window=window)
    with torch.no_grad():
        got = hstu_cached_attention(**a, backend="triton")
        low = reference(a, dtype) if dtype != torch.float32 else reference(a, torch.float32)
    want = reference(a)
    err, low_err = (got.double() - want).abs().max().item(), (low.double() - want).abs().max().item()
    assert torch.isfinite(got).all() and err <= 2 * low_err + 1e-4 * want.abs().max().item(), (err, low_err)


@gpu
@needs_cuda
def test_gpu_every_config():
    from hstu_kernels.ops.hstu_cached_attention import triton_fwd as triton_kernel

    a = mfalcon_case(8, 150, 300, 64, torch.bfloat16, qts=True, window=40)
    want = reference(a)
    low_err = (reference(a, torch.bfloat16).double() - want).abs().max().item()
    try:
        for c in triton_kernel._configs():
            triton_kernel.CONFIG_OVERRIDE = (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
            with torch.no_grad():
                got = hstu_cached_attention(**a, backend="triton")
            err = (got.double() - want).abs().max().item()
            assert err <= 2 * low_err + 1e-4 * want.abs().max().item(), (triton_kernel.CONFIG_OVERRIDE, err)
    finally:
        triton_kernel.CONFIG_OVERRIDE = None


@gpu
@needs_cuda
def test_gpu_auto_picks_triton():
    a = mfalcon_case(4, 50, 20, 64, torch.bfloat16)
    args = (a["q"], a["k"], a["v"], a["k_cache"], a["v_cache"])
    with torch.no_grad():
        assert choose_backend("auto", *args) == "triton"
    assert choose_backend("auto", a["q"].requires_grad_(), *args[1:]) == "torch"
