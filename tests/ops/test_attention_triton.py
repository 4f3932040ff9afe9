"""The fused Triton backend of ``hstu_attention`` against the naive op computed in float64.

CPU tier: Triton's interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` when there is no CUDA device),
tiny jagged batches in fp32 (one fp16 case), forward and all five gradients (q, k, v, pos_weight, time_weight),
every option alone and combined, lengths 0, 1, odd and not multiples of the block size, sequences longer than
max_seq_len thanks to targets, empty batches, poisoned ``torch.empty`` (NaN-filled), ``torch.compile``.

GPU tier (``@pytest.mark.gpu``, skipped without CUDA): real sizes up to N = 8192 in bf16/fp16/fp32 under the
2x rule, error(triton vs fp64 reference) <= 2 * error(naive op in the same precision vs fp64 reference) + atol,
for the output and each gradient, with NaN-poisoned allocations; every autotune config; ``backend="auto"``.
"""

import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from hstu_kernels import hstu_attention
from hstu_kernels.ops.hstu_attention import (
    backend_reasons,
    choose_backend,
    naive_hstu_attention,
    triton_bwd,
    triton_fwd,
    triton_impl,
)
from hstu_kernels.ops.common import triton_support

INTERPRET = triton_fwd.INTERPRET
HAS_CUDA = torch.cuda.is_available()
cpu_tier = pytest.mark.skipif(not INTERPRET, reason="the CPU tier runs the kernels under TRITON_INTERPRET=1")

UNIX_BOUNDARIES = (3600, 86400, 604800, 2592000)  # < 1 hour, < 1 day, < 1 week, < 30 days


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def make_batch(lengths, *, H=2, D=16, Dv=None, max_seq_len=None, targets=None, Hb=None, boundaries=(3, 20, 90),
               pos=True, time=True, qts=False, ts_dtype=torch.int64, t0=0, t_range=200, dtype=torch.float32,
               device="cpu", seed=0):
    """A jagged batch (built on the CPU from ``seed``, then moved): dict of ``hstu_attention`` arguments."""
    g = torch.Generator().manual_seed(seed)
    Dv = D if Dv is None else Dv
    L = sum(lengths)
    if max_seq_len is None:  # the smallest valid one: every position p(i) = min(i, n - targets) < max_seq_len
        ts = targets if targets is not None else [0] * len(lengths)
        max_seq_len = max([1] + [min(n - 1, n - t) + 1 for n, t in zip(lengths, ts)])
    Hb = H if Hb is None else Hb
    batch = dict(
        q=torch.randn(L, H, D, generator=g),
        k=torch.randn(L, H, D, generator=g),
        v=torch.randn(L, H, Dv, generator=g),
        seq_offsets=torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0),
        max_seq_len=max_seq_len,
    )
    if pos:
        batch["pos_weight"] = 0.5 * torch.randn(Hb, 2 * max_seq_len - 1, generator=g)
    if time:
        batch["timestamps"] = (t0 + torch.randint(0, t_range, (L,), generator=g)).to(ts_dtype)
        if qts:
            batch["query_timestamps"] = (t0 + torch.randint(0, t_range, (L,), generator=g)).to(ts_dtype)
        batch["time_boundaries"] = torch.tensor(boundaries, dtype=torch.int64)
        batch["time_weight"] = 0.5 * torch.randn(Hb, len(boundaries) + 1, generator=g)
    if targets is not None:
        batch["num_targets"] = torch.tensor(targets, dtype=torch.int64)
    for name in ("q", "k", "v"):
        batch[name] = batch[name].to(dtype)
    return {name: (x.to(device) if isinstance(x, torch.Tensor) else x) for name, x in batch.items()}


GRAD_NAMES = ("q", "k", "v", "pos_weight", "time_weight")


def run_op(batch, backend, *, cast=None, grad_out=None, seed=1, check=True, **options):
    """Output and gradients of every differentiable input present; ``cast`` converts the float inputs first."""
    inputs = {}
    for name, x in batch.items():
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            x = x.detach().to(cast) if cast is not None else x.detach().clone()
            x.requires_grad_(True)
        inputs[name] = x
    fn = naive_hstu_attention if backend == "reference" else hstu_attention
    extra = {} if backend == "reference" else dict(backend=backend, check=check)
    out = fn(**inputs, **options, **extra)
    if grad_out is None:
        g = torch.Generator().manual_seed(seed)
        grad_out = torch.randn(out.shape, generator=g).to(out.device)
    leaves = [name for name in GRAD_NAMES if name in inputs]
    grads = torch.autograd.grad(out, [inputs[n] for n in leaves], grad_out.to(out.dtype), allow_unused=True)
    return out, dict(zip(leaves, grads)), grad_out


def reference(batch, grad_out, **options):
    out, grads, _ = run_op(batch, "reference", cast=torch.float64, grad_out=grad_out.double(), **options)
    return out, grads


def assert_matches_fp64(batch, rel=2e-5, check=True, **options):
    """fp32 Triton output and gradients against the naive op in float64, scaled by each result's magnitude."""
    out, grads, grad_out = run_op(batch, "triton", check=check, **options)
    ref_out, ref_grads = reference(batch, grad_out, **options)
    results = [("out", out, ref_out)] + [(n, grads[n], ref_grads[n]) for n in grads]
    for name, got, want in results:
        assert got is not None and want is not None, name
        assert got.shape == want.shape and got.dtype == batch.get(name, batch["q"]).dtype, name
        assert torch.isfinite(got).all(), f"{name}: non-finite values"
        err = (got.double() - want).abs().max().item() if want.numel() else 0.0
        bound = rel * max(1.0, want.abs().max().item() if want.numel() else 0.0)
        assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g}"


# ---------------------------------------------------------------------------------------------------------------
# CPU tier (interpreter)
# ---------------------------------------------------------------------------------------------------------------
LENGTHS = [5, 0, 17, 33, 1]  # empty, single, odd, not multiples of the block (16)
TARGETS = [2, 0, 3, 5, 1]  # the last sequence is a single target
OPTIONS = {
    "plain": dict(pos=False, time=False),
    "pos": dict(time=False),
    "time": dict(pos=False),
    "both": dict(),
    "shared_tables": dict(Hb=1),
    "query_timestamps": dict(qts=True),
    "targets": dict(targets=TARGETS),
    "window": dict(window=5),
    "targets_window": dict(targets=TARGETS, window=3, qts=True),
    "all_shared": dict(targets=TARGETS, window=4, Hb=1, qts=True),
    "targets_no_bias": dict(targets=TARGETS, window=2, pos=False, time=False),
}


@cpu_tier
@pytest.mark.parametrize("option", list(OPTIONS))
def test_matches_fp64_reference(option):
    o = dict(OPTIONS[option])
    window = o.pop("window", 0)
    assert_matches_fp64(make_batch(LENGTHS, **o), alpha=0.7, max_attn_len=window)


@cpu_tier
@pytest.mark.parametrize("window", [0, 3])
def test_sequences_longer_than_max_seq_len(window):
    # n = 40 > max_seq_len = 22 with 20 targets; a target-only tail spans whole query and key blocks
    batch = make_batch([40, 23, 9, 0], targets=[20, 3, 0, 0], max_seq_len=22, D=32, Dv=16)
    assert_matches_fp64(batch, max_attn_len=window)


@cpu_tier
@pytest.mark.parametrize("dims", [(48, 24), (16, 32), (8, 8)])
def test_head_dims(dims):
    dqk, dv = dims
    assert_matches_fp64(make_batch([19, 6], D=dqk, Dv=dv, targets=[2, 1]), max_attn_len=6)


@cpu_tier
@pytest.mark.parametrize("boundaries", [(), (7,), tuple(range(0, 160, 10)), (-5, 0, 7, 2**31 + 5, 2**33)],
                         ids=["none", "one", "sixteen", "extremes"])
@pytest.mark.parametrize("ts_dtype", [torch.int64, torch.int32])
def test_time_boundaries(boundaries, ts_dtype):
    batch = make_batch([21, 12], boundaries=boundaries, ts_dtype=ts_dtype, qts=True, Hb=1)
    assert_matches_fp64(batch)


@cpu_tier
@pytest.mark.parametrize("ts_dtype", [torch.int64, torch.int32])
def test_unix_timestamps(ts_dtype):
    batch = make_batch([30, 17], boundaries=UNIX_BOUNDARIES, ts_dtype=ts_dtype, t0=1_700_000_000,
                       t_range=5_000_000, targets=[4, 2])
    assert_matches_fp64(batch)


@cpu_tier
def test_alpha_scale_and_windows():
    batch = make_batch([26, 3, 18], targets=[3, 0, 18])  # the last sequence is all targets (u = 0)
    assert_matches_fp64(batch, alpha=0.37, scale=0.5, max_attn_len=1)
    assert_matches_fp64(batch, alpha=-1.3, max_attn_len=100)  # a window longer than every sequence


@cpu_tier
@pytest.mark.parametrize("fwd_blocks,bwd_blocks", [((32, 16), (16, 32)), ((16, 32), (32, 32))])
def test_block_shapes(monkeypatch, fwd_blocks, bwd_blocks):
    """BLOCK_M != BLOCK_N (the GPU configs' shapes) through the same range and mask-free tile logic."""
    monkeypatch.setattr(triton_fwd, "FWD_CONFIG_OVERRIDE", (*fwd_blocks, 4, 1))
    monkeypatch.setattr(triton_bwd, "BWD_CONFIG_OVERRIDE", (*bwd_blocks, 4, 1))
    batch = make_batch([70, 40, 9, 33], targets=[6, 20, 0, 1], max_seq_len=65, qts=True)
    assert_matches_fp64(batch, max_attn_len=0)
    assert_matches_fp64(batch, max_attn_len=21)


@cpu_tier
def test_frozen_tables_get_no_gradient():
    batch = make_batch([13, 20], targets=[1, 2])
    inputs = {n: (x.clone().requires_grad_(n in ("q", "k", "v")) if n in GRAD_NAMES else x) for n, x in batch.items()}
    out = hstu_attention(**inputs, backend="triton")
    loss = out.square().sum()
    loss.backward()
    assert inputs["pos_weight"].grad is None and inputs["time_weight"].grad is None
    ref = naive_hstu_attention(**{n: (x.double() if n in GRAD_NAMES else x) for n, x in batch.items()})
    assert (out.double() - ref).abs().max() < 1e-5


@cpu_tier
def test_fp16_two_x_rule():
    batch = make_batch([37, 12], targets=[3, 1], dtype=torch.float16)
    assert_two_x_rule(batch, max_attn_len=9)


@cpu_tier
def test_check_false_and_unknown_max_len():
    batch = make_batch([9, 31], targets=[2, 2])
    assert_matches_fp64(batch, check=False, max_attn_len=4)


@cpu_tier
def test_check_false_reads_the_longest_sequence_once(monkeypatch):
    """With check=False the forward reads the longest length (a host sync on a GPU); the backward reuses it."""
    calls = []
    real = triton_impl.longest_segment
    monkeypatch.setattr(triton_impl, "longest_segment", lambda offsets: calls.append(1) or real(offsets))
    out, grads, _ = run_op(make_batch([9, 31], targets=[2, 2]), "triton", check=False)
    assert len(calls) == 1 and grads["q"] is not None
    calls.clear()
    run_op(make_batch([9, 31], targets=[2, 2]), "triton", check=True)
    assert calls == []  # the checks computed it already


def test_backward_uses_the_exact_sigmoid(monkeypatch):
    """tanh.approx serves the bf16 forward only: its error times SiLU's derivative is too large for the backward."""
    pytest.importorskip("triton")
    seen = {}

    def fake_launch(raw, tuned, override, grid_key, B, H, max_len, args, meta):
        seen[grid_key] = meta["FAST_SIGMOID"]

    monkeypatch.setattr(triton_fwd, "INTERPRET", False)
    monkeypatch.setattr(triton_fwd, "launch", fake_launch)
    monkeypatch.setattr(triton_bwd, "launch", fake_launch)
    batch = make_batch([7, 4], dtype=torch.bfloat16)
    args = dict(alpha=1.0, scale=0.1, timestamps=batch["timestamps"], pos_weight=batch["pos_weight"],
                time_weight=batch["time_weight"], time_boundaries=batch["time_boundaries"])
    q, k, v, offsets = batch["q"], batch["k"], batch["v"], batch["seq_offsets"]
    triton_fwd.hstu_attention_fwd(q, k, v, offsets, batch["max_seq_len"], 7, **args)
    triton_bwd.hstu_attention_bwd(torch.ones_like(v), q, k, v, offsets, batch["max_seq_len"], 7, **args)
    assert seen == {"BLOCK_M": True, "BLOCK_N": False}


def test_quick_autotune_keeps_one_config(monkeypatch):
    pytest.importorskip("triton")
    q = torch.zeros(4, 1, 64, dtype=torch.bfloat16)
    args = dict(Q=q, AUTOTUNE_LEN=4096, BLOCK_DQK=128, BLOCK_DV=128)
    monkeypatch.setenv("HSTU_AUTOTUNE", "full")
    full_fwd = triton_fwd._prune_fwd(triton_fwd._fwd_configs(), args)
    full_bwd = triton_bwd._prune_bwd(triton_bwd._bwd_configs(), args)
    assert len(full_fwd) > 1 and len(full_bwd) > 1
    monkeypatch.setenv("HSTU_AUTOTUNE", "quick")
    assert triton_fwd._prune_fwd(triton_fwd._fwd_configs(), args) == full_fwd[:1]
    assert triton_bwd._prune_bwd(triton_bwd._bwd_configs(), args) == full_bwd[:1]
    monkeypatch.setenv("HSTU_AUTOTUNE", "fastest")
    with pytest.raises(ValueError, match="HSTU_AUTOTUNE"):
        triton_fwd._prune_fwd(triton_fwd._fwd_configs(), args)


@cpu_tier
@pytest.mark.parametrize("lengths", [[], [0, 0, 0]], ids=["no_sequences", "empty_sequences"])
def test_empty_batches(lengths):
    batch = make_batch(lengths, targets=[0] * len(lengths))
    out, grads, _ = run_op(batch, "triton")
    assert out.shape == (0, 2, 16)
    assert grads["q"].shape == (0, 2, 16)
    assert grads["pos_weight"].abs().sum() == 0 and grads["time_weight"].abs().sum() == 0


@cpu_tier
def test_non_contiguous_inputs():
    base = make_batch([22, 7], targets=[2, 0], qts=True)
    L, H, D = base["q"].shape
    qkv = torch.randn(L, H, 3 * D)  # q, k, v as slices of a fused projection: unit stride in the last dim
    batch = dict(base, q=qkv[..., :D], k=qkv[..., D:2 * D], v=qkv[..., 2 * D:])
    assert_matches_fp64(batch, max_attn_len=5)
    dqk = torch.randn(D, H, L).permute(2, 1, 0)  # last dim not unit-stride: copied
    assert_matches_fp64(dict(base, q=dqk), max_attn_len=5)


@cpu_tier
def test_poisoned_allocations(poisoned_empty):
    assert_matches_fp64(make_batch(LENGTHS, targets=TARGETS, qts=True, D=32, Dv=16), max_attn_len=6)


@cpu_tier
def test_torch_compile_fullgraph():
    batch = make_batch([12, 5], targets=[2, 1])

    def f(q, k, v, pw, tw):
        kw = dict(batch, q=q, k=k, v=v, pos_weight=pw, time_weight=tw)
        return hstu_attention(**kw, backend="triton", check=False).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    args = [batch[n].clone().requires_grad_(True) for n in GRAD_NAMES]
    loss = compiled(*args)
    loss.backward()
    ref_args = [batch[n].double().requires_grad_(True) for n in GRAD_NAMES]
    ref = naive_hstu_attention(**dict(batch, **dict(zip(GRAD_NAMES, ref_args)))).square().sum()
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    for a, b in zip(args, ref_args):
        assert (a.grad.double() - b.grad).abs().max() <= 1e-5 * max(1.0, b.grad.abs().max().item())


# ---------------------------------------------------------------------------------------------------------------
# dispatch and reasons (any machine)
# ---------------------------------------------------------------------------------------------------------------
def test_reasons():
    x = torch.zeros(3, 2, 16)
    r = triton_impl.unsupported_reasons
    assert any("float64" in s for s in r(x.double(), x.double(), x.double()))
    assert any("head dim" in s for s in r(torch.zeros(3, 2, 512), torch.zeros(3, 2, 512), x))
    assert any("16 time boundaries" in s for s in r(x, x, x, None, torch.zeros(2, 18), torch.arange(17)))
    assert any("float64" in s for s in r(x, x, x, torch.zeros(2, 5, dtype=torch.float64)))
    if INTERPRET:
        assert r(x, x, x) == []
        assert any("bfloat16" in s for s in r(x.bfloat16(), x.bfloat16(), x.bfloat16()))
    else:
        assert any("CUDA tensors" in s for s in r(x, x, x))


def test_cpu_tensors_refused_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(triton_support, "INTERPRET", False)
    batch = make_batch([4, 3])
    assert "needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)" in backend_reasons(
        batch["q"], batch["k"], batch["v"])["triton"]
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        hstu_attention(**batch, backend="triton")
    assert choose_backend("auto", batch["q"], batch["k"], batch["v"]) == "torch"


def test_import_does_not_import_triton():
    code = (
        "import sys, torch, hstu_kernels\n"
        "from hstu_kernels.ops.hstu_attention import backend_reasons\n"
        "x = torch.zeros(2, 1, 16)\n"
        "backend_reasons(x, x, x)\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------------------------
# GPU tier
# ---------------------------------------------------------------------------------------------------------------
LOW_ATOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}


def assert_two_x_rule(batch, **options):
    """error(triton vs fp64) <= 2 * error(naive op in the same precision vs fp64) + atol, output and grads."""
    dtype = batch["q"].dtype
    out, grads, grad_out = run_op(batch, "triton", **options)
    low_out, low_grads, _ = run_op(batch, "torch", grad_out=grad_out, **options)
    ref_out, ref_grads = reference(batch, grad_out, **options)
    results = [("out", out, low_out, ref_out)] + [(n, grads[n], low_grads[n], ref_grads[n]) for n in grads]
    for name, got, low, want in results:
        assert torch.isfinite(got).all(), f"{name}: non-finite values"
        if want.numel() == 0:
            continue
        err = (got.double() - want).abs().max().item()
        low_err = (low.double() - want).abs().max().item()
        atol = LOW_ATOL[dtype] * max(1.0, want.abs().max().item())
        assert err <= 2 * low_err + atol, f"{name}: error {err:.3g} > 2 x naive's {low_err:.3g} + {atol:.3g}"


def jagged_lengths(B, N, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(int(0.9 * N), N + 1, (B,), generator=g).tolist()


GPU_SHAPES = {  # (B, N, H, D)
    "movielens": (16, 200, 1, 64),
    "n1024": (4, 1024, 2, 128),
    "n8192": (1, 8192, 2, 128),
}
GPU_OPTIONS = {
    "plain": dict(pos=False, time=False),
    "both": dict(),
    "all": dict(targets=True, window=300, qts=True, Hb=1),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("option", list(GPU_OPTIONS))
@pytest.mark.parametrize("shape", list(GPU_SHAPES))
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_two_x_rule(poisoned_empty, shape, option, dtype):
    B, N, H, D = GPU_SHAPES[shape]
    o = dict(GPU_OPTIONS[option])
    window = o.pop("window", 0)
    lengths = jagged_lengths(B, N, seed=B + N)
    targets = None
    if o.pop("targets", False):
        g = torch.Generator().manual_seed(3)
        targets = [int(t) for t in torch.randint(0, 40, (B,), generator=g)]
    batch = make_batch(lengths, H=H, D=D, max_seq_len=N, targets=targets, boundaries=UNIX_BOUNDARIES,
                       t0=1_700_000_000, t_range=10_000_000, dtype=dtype, device="cuda", **o)
    assert_two_x_rule(batch, max_attn_len=window)


def _config_tuple(cfg):
    return (cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages)


def _pair_id(pair):
    return "fwd{}x{}w{}s{}-bwd{}x{}w{}s{}".format(*pair[0], *pair[1])


# each forward config beside a backward config (the shorter list wraps), one test each so xdist spreads compiles
CONFIG_PAIRS = [
    (_config_tuple(f), _config_tuple(b))
    for f, b in zip(triton_fwd._fwd_configs(), triton_bwd._bwd_configs() * 2)
]


def _every_option_batch(dtype):
    return make_batch(jagged_lengths(3, 700, 0) + [1, 0, 130], targets=[5, 0, 200, 1, 0, 2], H=2, D=64, Dv=32,
                      max_seq_len=700, qts=True, boundaries=tuple(range(0, 150, 10)), dtype=dtype, device="cuda")


@pytest.mark.parametrize("window", [0, 77])
@pytest.mark.parametrize("pair", CONFIG_PAIRS, ids=_pair_id)
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_every_config(monkeypatch, pair, window):
    """Each autotune config of both kernels (autotuning runs only the fastest) in bf16, every option on."""
    monkeypatch.setattr(triton_fwd, "FWD_CONFIG_OVERRIDE", pair[0])
    monkeypatch.setattr(triton_bwd, "BWD_CONFIG_OVERRIDE", pair[1])
    assert_two_x_rule(_every_option_batch(torch.bfloat16), max_attn_len=window)


def _fp32_kept_configs():
    """The configs pruning keeps for fp32 (the others spill tens of KB and take minutes to compile)."""
    q = torch.zeros(1, 1, 64)
    args = dict(Q=q, AUTOTUNE_LEN=1024, BLOCK_DQK=64, BLOCK_DV=32)
    fwd = [_config_tuple(c) for c in triton_fwd._prune_fwd(triton_fwd._fwd_configs(), args)]
    bwd = [_config_tuple(c) for c in triton_bwd._prune_bwd(triton_bwd._bwd_configs(), args)]
    return list(zip(fwd, bwd * len(fwd)))


@pytest.mark.parametrize("pair", _fp32_kept_configs(), ids=_pair_id)
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_fp32_kept_configs(monkeypatch, pair):
    monkeypatch.setattr(triton_fwd, "FWD_CONFIG_OVERRIDE", pair[0])
    monkeypatch.setattr(triton_bwd, "BWD_CONFIG_OVERRIDE", pair[1])
    assert_matches_fp64(_every_option_batch(torch.float32), rel=2e-4, max_attn_len=77)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_auto_picks_triton_and_cpu_is_refused():
    batch = make_batch([5, 9], device="cuda")
    assert choose_backend("auto", batch["q"], batch["k"], batch["v"]) == "triton"
    if not INTERPRET:
        x = torch.zeros(2, 1, 16)
        assert any("CUDA tensors" in r for r in triton_impl.unsupported_reasons(x, x, x))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_torch_compile_inductor():
    batch = make_batch(jagged_lengths(4, 256, 1), H=2, D=64, max_seq_len=256, targets=[1, 2, 3, 4],
                       dtype=torch.bfloat16, device="cuda")

    def f(q, k, v, pw, tw):
        return hstu_attention(**dict(batch, q=q, k=k, v=v, pos_weight=pw, time_weight=tw), check=False)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    args = [batch[n].clone().requires_grad_(True) for n in GRAD_NAMES]
    out = compiled(*args)
    out.float().square().sum().backward()
    ref_args = [batch[n].clone().requires_grad_(True) for n in GRAD_NAMES]
    ref = f(*ref_args)
    ref.float().square().sum().backward()
    torch.testing.assert_close(out, ref)
    for a, b in zip(args, ref_args):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_tf32_option():
    batch = make_batch([300, 200], H=2, D=64, device="cuda")
    triton_impl.set_fp32_precision("tf32")
    try:
        out, _, _ = run_op(batch, "triton")
    finally:
        triton_impl.set_fp32_precision("ieee")
    ref, _, _ = run_op(batch, "torch")
    assert (out - ref).abs().max() < 1e-2 * max(1.0, ref.abs().max().item())
