"""GPU tier of the CUDA backend of ``hstu_attention`` (``@pytest.mark.gpu``; skipped without a CUDA device or
without the built extension ``hstu_kernels._C``).

- the parity grid: output and all five gradients against the naive op in float64 under the 2x rule
  (error <= 2 * error(naive in the same precision) + atol), bf16 and fp16, real shapes, every option, with
  NaN-poisoned allocations (an element the kernels never write shows);
- CUDA vs Triton agreement on the same batches;
- deterministic mode: two backward passes are bitwise equal, and agree with the atomic backward;
- every built head dim, int32 timestamps, strided inputs, torch.compile (inductor) through the ops;
- on compute capability 9.0 with the sm90 family built, the parity and edge tests run the forward on both
  kernel families (``HSTU_CUDA_SM90=1`` / ``0``), and the two families' outputs agree.

The CPU tiers of the same kernels: tests/test_cuda_emulated.py (the kernels on the warp emulator) and
tests/test_cuda_python.py (this backend's Python side on emulated ops).
"""

import pytest
import torch

from hstu_kernels.ops.hstu_attention import cuda_impl
from hstu_kernels.ops.hstu_attention.naive import naive_hstu_attention

HAS_CUDA = torch.cuda.is_available()
BUILT, WHY = cuda_impl.available() if HAS_CUDA else (False, "no CUDA device")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not (HAS_CUDA and BUILT), reason=f"needs a CUDA device and "
                                                  f"the extension ({WHY})")]

GRADS = ("q", "k", "v", "pos_weight", "time_weight")
FAMILIES = ["sm80", "sm90"]


def sm90_runs():
    from hstu_kernels.ops.common import cuda_ext

    return "sm90" in cuda_ext.kernel_families() and torch.cuda.get_device_capability() == (9, 0)


@pytest.fixture(params=FAMILIES)
def family(request, monkeypatch):
    """The forward's kernel family: sm90 (wgmma / TMA) only where it is built and the device is 9.0."""
    if request.param == "sm90" and not sm90_runs():
        pytest.skip("the sm90 family needs an sm_90a build and a compute capability 9.0 device")
    monkeypatch.setenv("HSTU_CUDA_SM90", "1" if request.param == "sm90" else "0")
    return request.param
ATOL = {torch.float16: 1e-4, torch.bfloat16: 1e-3}
UNIX_BOUNDARIES = (3600, 86400, 604800, 2592000)


def make_batch(lengths, *, H=2, D=128, max_seq_len=None, targets=None, Hb=None, boundaries=UNIX_BOUNDARIES,
               pos=True, time=True, qts=False, t0=1_700_000_000, t_range=10_000_000, ts_dtype=torch.int64,
               dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = sum(lengths)
    if max_seq_len is None:
        ts = targets if targets is not None else [0] * len(lengths)
        max_seq_len = max([1] + [min(n - 1, n - t) + 1 for n, t in zip(lengths, ts)])
    Hb = H if Hb is None else Hb
    b = dict(q=torch.randn(L, H, D, generator=g), k=torch.randn(L, H, D, generator=g),
             v=torch.randn(L, H, D, generator=g),
             seq_offsets=torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0), max_seq_len=max_seq_len)
    if pos:
        b["pos_weight"] = 0.5 * torch.randn(Hb, 2 * max_seq_len - 1, generator=g)
    if time:
        b["timestamps"] = (t0 + torch.randint(0, t_range, (L,), generator=g)).to(ts_dtype)
        if qts:
            b["query_timestamps"] = (t0 + torch.randint(0, t_range, (L,), generator=g)).to(ts_dtype)
        b["time_boundaries"] = torch.tensor(boundaries, dtype=torch.int64)
        b["time_weight"] = 0.5 * torch.randn(Hb, len(boundaries) + 1, generator=g)
    if targets is not None:
        b["num_targets"] = torch.tensor(targets, dtype=torch.int64)
    return {n: (x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x) for n, x in b.items()}


def to_cuda(batch):
    return {n: (x.cuda() if isinstance(x, torch.Tensor) else x) for n, x in batch.items()}


def run(fn, batch, grad_out, cast=None, **options):
    inputs = {n: (x.detach().to(cast or x.dtype).requires_grad_(True) if n in GRADS else x) for n, x in batch.items()}
    out = fn(**inputs, **options)
    leaves = [n for n in GRADS if n in inputs]
    grads = torch.autograd.grad(out, [inputs[n] for n in leaves], grad_out.to(out.dtype))
    return out, dict(zip(leaves, grads))


def assert_two_x_rule(batch, **options):
    batch = to_cuda(batch)
    dtype = batch["q"].dtype
    grad_out = torch.randn(batch["q"].shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    out, grads = run(cuda_impl.hstu_attention_cuda, batch, grad_out, **options)
    low_out, low_grads = run(naive_hstu_attention, batch, grad_out, **options)
    ref_out, ref_grads = run(naive_hstu_attention, batch, grad_out, cast=torch.float64, **options)
    for name, got, low, want in [("out", out, low_out, ref_out)] + [(n, grads[n], low_grads[n], ref_grads[n])
                                                                     for n in grads]:
        assert got.dtype == low.dtype and got.shape == low.shape, name
        assert torch.isfinite(got).all(), f"{name}: non-finite values"
        if want.numel() == 0:
            continue
        err = (got.double() - want).abs().max().item()
        low_err = (low.double() - want).abs().max().item()
        atol = ATOL[dtype] * max(1.0, want.abs().max().item())
        assert err <= 2 * low_err + atol, f"{name}: error {err:.3g} > 2 x naive's {low_err:.3g} + {atol:.3g}"
    return out, grads


def jagged_lengths(B, N, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(int(0.9 * N), N + 1, (B,), generator=g).tolist()


SHAPES = {"movielens": (16, 200, 1, 64), "n1024": (4, 1024, 2, 128), "n4096": (2, 4096, 2, 128)}
OPTIONS = {
    "plain": dict(pos=False, time=False),
    "both": dict(),
    "all": dict(targets=True, window=300, qts=True, Hb=1),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_two_x_rule(poisoned_empty, family, shape, option, dtype):
    B, N, H, D = SHAPES[shape]
    o = dict(OPTIONS[option])
    window = o.pop("window", 0)
    targets = [int(t) for t in torch.randint(0, 40, (B,), generator=torch.Generator().manual_seed(3))] if o.pop(
        "targets", False) else None
    batch = make_batch(jagged_lengths(B, N, seed=B + N), H=H, D=D, max_seq_len=N, targets=targets, dtype=dtype, **o)
    assert_two_x_rule(batch, max_attn_len=window)


@pytest.mark.parametrize("D", [64, 128])
def test_small_and_edge_batches(poisoned_empty, family, D):
    # empty, single, all-targets sequences, a sequence longer than max_seq_len thanks to targets
    batch = make_batch([5, 0, 1, 130, 300, 77], targets=[2, 0, 1, 130, 120, 0], max_seq_len=181, D=D, qts=True)
    assert_two_x_rule(batch, alpha=0.7, max_attn_len=0)
    assert_two_x_rule(batch, max_attn_len=33)


def test_int32_timestamps_and_boundary_extremes(family):
    batch = make_batch([200, 90], ts_dtype=torch.int32, boundaries=(-5, 0, 7, 2**31 + 5, 2**33), qts=True)
    assert_two_x_rule(batch)
    wide = make_batch([150], boundaries=(0, 7, 2**32 - 2, 2**32 - 1, 2**33), t0=0, t_range=2**34)
    assert_two_x_rule(wide)


def test_strided_inputs(family):
    batch = to_cuda(make_batch([333, 100], targets=[3, 5]))
    fused = torch.stack([batch["q"], batch["k"], batch["v"]], dim=1)
    strided = dict(batch, q=fused[:, 0], k=fused[:, 1], v=fused[:, 2])
    g = torch.randn(batch["q"].shape, device="cuda")
    out_s, grads_s = run(cuda_impl.hstu_attention_cuda, strided, g)
    out_c, grads_c = run(cuda_impl.hstu_attention_cuda, batch, g)
    torch.testing.assert_close(out_s, out_c)
    for n in grads_c:
        torch.testing.assert_close(grads_s[n], grads_c[n], rtol=2e-2, atol=2e-2)  # dq atomics: order varies


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sm90_forward_agrees_with_sm80(monkeypatch, D, dtype):
    if not sm90_runs():
        pytest.skip("the sm90 family needs an sm_90a build and a compute capability 9.0 device")
    batch = to_cuda(make_batch([1, 0, 127, 128, 129, 700, 33], targets=[0, 0, 5, 0, 129, 11, 3], D=D,
                               max_seq_len=700, qts=True, dtype=dtype))
    outs = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("HSTU_CUDA_SM90", flag)
        outs[flag] = cuda_impl.hstu_attention_cuda(**batch, max_attn_len=150)
    scale = max(1.0, outs["0"].abs().max().item())
    assert torch.isfinite(outs["1"]).all()
    assert (outs["1"].float() - outs["0"].float()).abs().max().item() < 1e-2 * scale


def test_agrees_with_triton():
    pytest.importorskip("triton")
    from hstu_kernels.ops.hstu_attention import triton_impl

    batch = to_cuda(make_batch(jagged_lengths(8, 512, 5), D=128, max_seq_len=512, targets=[4] * 8, qts=True))
    g = torch.randn(batch["q"].shape, device="cuda")
    out_c, grads_c = run(cuda_impl.hstu_attention_cuda, batch, g, max_attn_len=100)
    out_t, grads_t = run(triton_impl.hstu_attention_triton, batch, g, max_attn_len=100)
    scale = max(1.0, out_t.abs().max().item())
    assert (out_c.float() - out_t.float()).abs().max().item() < 2e-2 * scale
    for n in grads_t:
        s = max(1.0, grads_t[n].abs().max().item())
        assert (grads_c[n].float() - grads_t[n].float()).abs().max().item() < 3e-2 * s, n


@pytest.mark.parametrize("D", [64, 128])
def test_deterministic_backward_is_bitwise_reproducible(D):
    batch = to_cuda(make_batch(jagged_lengths(4, 700, 2), D=D, max_seq_len=700, targets=[5, 0, 9, 1], qts=True,
                               Hb=1))
    g = torch.randn(batch["q"].shape, device="cuda")
    cuda_impl.set_deterministic(True)
    try:
        _, first = run(cuda_impl.hstu_attention_cuda, batch, g, max_attn_len=200)
        _, second = run(cuda_impl.hstu_attention_cuda, batch, g, max_attn_len=200)
    finally:
        cuda_impl.set_deterministic(False)
    for n in first:
        assert torch.equal(first[n], second[n]), f"d{n} differs between two deterministic runs"
    _, atomic = run(cuda_impl.hstu_attention_cuda, batch, g, max_attn_len=200)
    for n in first:
        s = max(1.0, atomic[n].abs().max().item())
        assert (first[n].float() - atomic[n].float()).abs().max().item() < 2e-2 * s, n


def test_torch_compile_inductor():
    batch = to_cuda(make_batch(jagged_lengths(4, 256, 1), D=64, max_seq_len=256, targets=[1, 2, 3, 4]))

    def f(q, k, v, pw, tw):
        return cuda_impl.hstu_attention_cuda(**dict(batch, q=q, k=k, v=v, pos_weight=pw, time_weight=tw))

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    args = [batch[n].clone().requires_grad_(True) for n in GRADS]
    out = compiled(*args)
    out.float().square().sum().backward()
    ref_args = [batch[n].clone().requires_grad_(True) for n in GRADS]
    ref = f(*ref_args)
    ref.float().square().sum().backward()
    torch.testing.assert_close(out, ref)
    for a, b in zip(args, ref_args):
        torch.testing.assert_close(a.grad, b.grad, rtol=2e-2, atol=2e-2)


def test_registry_wires_cuda():
    """hstu_attention(backend="cuda") once the backend registry installs this backend (see csrc/README.md)."""
    from hstu_kernels import hstu_attention
    from hstu_kernels.ops.hstu_attention import backend_reasons

    batch = to_cuda(make_batch([50, 20], D=64))
    if any("no CUDA kernels exist yet" in r for r in backend_reasons(batch["q"], batch["k"], batch["v"])["cuda"]):
        pytest.skip("the backend registry does not install the cuda backend yet")
    out = hstu_attention(**batch, backend="cuda")
    torch.testing.assert_close(out, cuda_impl.hstu_attention_cuda(**batch))
