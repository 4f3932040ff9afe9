"""The Python side of the CUDA backend (``hstu_kernels/ops/*/cuda_impl.py``) on the CPU.

Without the extension: the backend says why it cannot run ("the CUDA extension is not built"), bad arguments get
a TypeError / ValueError naming them before any C++ is reached.

With the C++ ops replaced by the emulated kernels: the schemas are read from ``csrc/bindings.cpp`` and defined
here with a CPU implementation that runs the kernels through the warp emulator (``tests/ops/cuda_host/emulated.py``),
so ``cuda_impl``'s autograd wiring, table-gradient dtypes, ``needs_input_grad`` handling, fake kernels and
``torch.compile`` tracing are exercised end to end. Skipped when the real extension is loaded (its ops would
clash) or there is no host C++ compiler.
"""

import re
from pathlib import Path

import pytest
import torch
from cuda_host import build as cbuild

from hstu_kernels.ops.common import cuda_build, cuda_ext
from hstu_kernels.ops.hstu_attention import cuda_impl
from hstu_kernels.ops.hstu_attention.naive import naive_hstu_attention
from hstu_kernels.ops.hstu_cached_attention import cuda_impl as cached_cuda_impl
from hstu_kernels.ops.hstu_cached_attention.naive import naive_hstu_cached_attention

ROOT = Path(__file__).resolve().parents[2]


def schemas():
    """The op schemas of csrc/bindings.cpp, by name."""
    text = (ROOT / "csrc" / "bindings.cpp").read_text()
    block = text[text.index("// schemas-begin"):text.index("// schemas-end")]
    out = {}
    for macro in re.split(r"#define HSTU_SCHEMA_\w+", block)[1:]:
        schema = "".join(re.findall(r'"([^"]*)"', macro))
        out[schema.split("(")[0]] = schema
    return out


def test_schemas_parse():
    s = schemas()
    assert set(s) == {"cuda_hstu_attention_fwd", "cuda_hstu_attention_bwd", "cuda_hstu_cached_attention_fwd"}
    for schema in s.values():
        torch._C.parse_schema("hstu_kernels::" + schema)  # valid schema syntax


# ---------------------------------------------------------------------------------------------------------------
# without the extension
# ---------------------------------------------------------------------------------------------------------------
extension_loaded = cuda_ext.extension()[0] is not None


@pytest.mark.skipif(extension_loaded, reason="the CUDA extension is built here")
def test_reasons_without_the_extension():
    x = torch.zeros(2, 1, 64, dtype=torch.bfloat16)
    reasons = cuda_impl.unsupported_reasons(x, x, x)
    assert reasons[0].startswith("the CUDA extension is not built")
    assert any("CUDA tensors" in r for r in reasons)
    assert cached_cuda_impl.unsupported_reasons(x, x, x, needs_grad=True)[-1].startswith("it has no backward")


def small_batch(dtype=torch.bfloat16, D=64, L=12, H=2):
    q = torch.randn(L, H, D).to(dtype)
    return dict(q=q, k=q.clone(), v=q.clone(), seq_offsets=torch.tensor([0, 5, L]), max_seq_len=L)


@pytest.mark.parametrize("change,error,match", [
    (dict(q=torch.zeros(12, 2, 64)), TypeError, "share one dtype"),
    (dict(q=torch.zeros(12, 2, 64), k=torch.zeros(12, 2, 64), v=torch.zeros(12, 2, 64)), TypeError,
     "bfloat16 or float16"),
    (dict(v=torch.zeros(12, 2, 32, dtype=torch.bfloat16)), ValueError, "Dqk == Dv"),
    (dict(seq_offsets=torch.tensor([0.0, 12.0])), TypeError, "seq_offsets"),
    (dict(time_weight=torch.zeros(2, 18), time_boundaries=torch.arange(17),
          timestamps=torch.zeros(12, dtype=torch.long)), ValueError, "at most 16"),
    (dict(pos_weight=torch.zeros(2, 5)), ValueError, "pos_weight"),
])
def test_bad_arguments_name_the_argument(change, error, match):
    batch = dict(small_batch(), **change)
    with pytest.raises(error, match=match):
        cuda_impl.hstu_attention_cuda(**batch)


def test_cached_bad_arguments():
    q = torch.zeros(3, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="cache_offsets"):
        cached_cuda_impl.hstu_cached_attention_cuda(q, q, q, torch.tensor([0, 3]), q, q, torch.tensor([0, 1, 3]), 8)
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        x = q.float()
        cached_cuda_impl.hstu_cached_attention_cuda(x, x, x, torch.tensor([0, 3]), x, x, torch.tensor([0, 3]), 8)


def test_build_config():
    assert cuda_build.head_dims({}) == (64, 128)
    assert cuda_build.head_dims({"HSTU_CUDA_HDIMS": "128"}) == (128,)
    with pytest.raises(ValueError, match="HSTU_CUDA_HDIMS"):
        cuda_build.head_dims({"HSTU_CUDA_HDIMS": "96"})
    assert cuda_build.archs({}) == ["80", "90a"]
    assert cuda_build.archs({"HSTU_CUDA_ARCHS": "sm_90a"}) == ["90a"]
    names = [Path(p).name for p in cuda_build.sources(dims=(128,), arch_list=["80"])]
    assert "bindings.cpp" in names and "launch.cu" in names
    assert names and all("hdim64" not in n for n in names)
    assert sum("hdim128" in n for n in names) == 6  # attention fwd, bwd, cached x bf16, fp16
    flags = cuda_build.nvcc_flags(["80", "90a"], (64,))
    assert "arch=compute_90a,code=sm_90a" in flags and "-DHSTU_HDIM_64" in flags
    # the sm90 family (wgmma / TMA forward): its files and its launcher branch only with an sm_90a target
    assert "-DHSTU_SM90" in flags and "-DHSTU_SM90" in cuda_build.cxx_flags((64,), ["90a"])
    assert "-DHSTU_SM90" not in cuda_build.nvcc_flags(["80"], (64,)) + cuda_build.cxx_flags((64,), ["80"])
    with_90a = [Path(p).name for p in cuda_build.sources(dims=(128,), arch_list=["80", "90a"])]
    assert sorted(set(with_90a) - set(names)) == ["attention_fwd_hdim128_bf16_sm90.cu", "attention_fwd_hdim128_fp16_sm90.cu"]


def test_generated_instantiations_are_current():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, str(ROOT / "csrc" / "generate_instantiations.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------------------------------------------------------
# with the emulated ops
# ---------------------------------------------------------------------------------------------------------------
class _FakeExtension:
    @staticmethod
    def built_head_dims():
        return [64, 128]


@pytest.fixture(scope="module")
def emulated_ops():
    if extension_loaded:
        pytest.skip("the real CUDA extension is loaded: its ops own these names")
    if cbuild.host_compiler() is None:
        pytest.skip("no host C++ compiler (g++ or $CXX)")
    from cuda_host import emulated

    def fwd(q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps, pos_weight,
            time_weight, time_boundaries, num_targets, max_attn_len):
        return emulated.attention_fwd(q, k, v, seq_offsets, max_seq_len, alpha=alpha, scale=scale,
                                      timestamps=timestamps, query_timestamps=query_timestamps,
                                      pos_weight=pos_weight, time_weight=time_weight,
                                      time_boundaries=time_boundaries, num_targets=num_targets,
                                      max_attn_len=max_attn_len)

    def bwd(grad_out, q, k, v, seq_offsets, max_seq_len, max_len, alpha, scale, timestamps, query_timestamps,
            pos_weight, time_weight, time_boundaries, num_targets, max_attn_len, need_dpw, need_dtw, deterministic):
        dq, dk, dv, dpw, dtw = emulated.attention_bwd(
            grad_out.contiguous(), q, k, v, seq_offsets, max_seq_len, alpha=alpha, scale=scale,
            timestamps=timestamps, query_timestamps=query_timestamps, pos_weight=pos_weight,
            time_weight=time_weight, time_boundaries=time_boundaries, num_targets=num_targets,
            max_attn_len=max_attn_len, deterministic=deterministic, need_dpw=need_dpw, need_dtw=need_dtw)
        empty = torch.empty(0)
        # what the launcher returns: table gradients in the tables' dtypes, empty fp32 tensors when not computed
        return (dq, dk, dv, dpw.to(pos_weight.dtype) if dpw is not None else empty,
                dtw.to(time_weight.dtype) if dtw is not None else empty.clone())

    def cached(q, k, v, cand_offsets, k_cache, v_cache, cache_offsets, max_seq_len, max_cands, alpha, scale,
               timestamps, query_timestamps, cache_timestamps, pos_weight, time_weight, time_boundaries,
               max_attn_len):
        return emulated.cached_fwd(q, k, v, cand_offsets, k_cache, v_cache, cache_offsets, max_seq_len, alpha=alpha,
                                   scale=scale, timestamps=timestamps, query_timestamps=query_timestamps,
                                   cache_timestamps=cache_timestamps, pos_weight=pos_weight,
                                   time_weight=time_weight, time_boundaries=time_boundaries,
                                   max_attn_len=max_attn_len)

    lib = torch.library.Library("hstu_kernels", "FRAGMENT")
    s = schemas()
    for name, fn in (("cuda_hstu_attention_fwd", fwd), ("cuda_hstu_attention_bwd", bwd),
                     ("cuda_hstu_cached_attention_fwd", cached)):
        lib.define(s[name])
        lib.impl(name, fn, "CPU")
    saved = cuda_ext._state
    cuda_ext._state = (_FakeExtension(), "")
    # what importing the package does when the extension is built: torch.compile's first trace needs the fakes
    cuda_impl.available()
    cached_cuda_impl.register()
    yield
    cuda_ext._state = saved


def batch_for(dtype=torch.bfloat16, D=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [20, 0, 70]
    L, H, N = sum(lengths), 2, 80
    return dict(
        q=torch.randn(L, H, D, generator=g).to(dtype), k=torch.randn(L, H, D, generator=g).to(dtype),
        v=torch.randn(L, H, D, generator=g).to(dtype), seq_offsets=torch.tensor([0] + lengths).cumsum(0),
        max_seq_len=N, pos_weight=(0.3 * torch.randn(1, 2 * N - 1, generator=g)).to(dtype),
        timestamps=torch.randint(0, 100, (L,), generator=g), time_boundaries=torch.tensor([5, 30]),
        time_weight=(0.3 * torch.randn(H, 3, generator=g)).to(dtype), num_targets=torch.tensor([2, 0, 5]),
    )


GRADS = ("q", "k", "v", "pos_weight", "time_weight")


def run(fn, batch, grad_out, cast=None, frozen=()):
    inputs = {n: (x.detach().to(cast or x.dtype).requires_grad_(n not in frozen) if n in GRADS else x)
              for n, x in batch.items()}
    out = fn(**inputs, max_attn_len=9)
    leaves = [n for n in GRADS if n not in frozen]
    grads = torch.autograd.grad(out, [inputs[n] for n in leaves], grad_out.to(out.dtype))
    return out, dict(zip(leaves, grads))


@pytest.mark.parametrize("deterministic", [False, True])
def test_autograd_through_the_emulated_ops(emulated_ops, deterministic):
    batch = batch_for()
    grad_out = torch.randn(batch["q"].shape)
    cuda_impl.set_deterministic(deterministic)
    try:
        out, grads = run(cuda_impl.hstu_attention_cuda, batch, grad_out)
    finally:
        cuda_impl.set_deterministic(False)
    low_out, low_grads = run(naive_hstu_attention, batch, grad_out)
    ref_out, ref_grads = run(naive_hstu_attention, batch, grad_out, cast=torch.float64)
    assert out.dtype == torch.bfloat16
    for name, got, low, want in [("out", out, low_out, ref_out)] + [(n, grads[n], low_grads[n], ref_grads[n])
                                                                     for n in GRADS]:
        assert got.dtype == low.dtype and got.shape == low.shape, name
        err = (got.double() - want).abs().max().item()
        low_err = (low.double() - want).abs().max().item()
        assert err <= 2 * low_err + 1e-3 * max(1.0, want.abs().max().item()), (name, err, low_err)


def test_frozen_tables_get_no_gradient(emulated_ops):
    batch = batch_for()
    _, grads = run(cuda_impl.hstu_attention_cuda, batch, torch.randn(batch["q"].shape),
                   frozen=("pos_weight", "time_weight"))
    assert set(grads) == {"q", "k", "v"}


def test_torch_compile_traces_the_ops(emulated_ops):
    batch = batch_for(seed=3)

    def f(q, k, v, pw, tw):
        return cuda_impl.hstu_attention_cuda(**dict(batch, q=q, k=k, v=v, pos_weight=pw, time_weight=tw),
                                             max_len=70)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = [batch[n].clone().requires_grad_(True) for n in GRADS]
    out = compiled(*args)
    out.float().square().sum().backward()
    ref_args = [batch[n].clone().requires_grad_(True) for n in GRADS]
    ref = f(*ref_args)
    ref.float().square().sum().backward()
    torch.testing.assert_close(out, ref)
    for a, b in zip(args, ref_args):
        torch.testing.assert_close(a.grad, b.grad)


def test_cached_through_the_emulated_op(emulated_ops):
    g = torch.Generator().manual_seed(1)
    H, D, N = 2, 64, 100
    cands, hists = [3, 0, 40], [50, 7, 0]
    C, Lh = sum(cands), sum(hists)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).bfloat16()

    args = (rnd(C, H, D), rnd(C, H, D), rnd(C, H, D), torch.tensor([0] + cands).cumsum(0), rnd(Lh, H, D),
            rnd(Lh, H, D), torch.tensor([0] + hists).cumsum(0), N)
    kw = dict(pos_weight=rnd(H, 2 * N - 1) * 0.3, timestamps=torch.randint(0, 50, (C,), generator=g),
              cache_timestamps=torch.randint(0, 50, (Lh,), generator=g), time_boundaries=torch.tensor([4, 20]),
              time_weight=rnd(1, 3), max_attn_len=30)
    with torch.no_grad():
        out = cached_cuda_impl.hstu_cached_attention_cuda(*args, **kw)
        low = naive_hstu_cached_attention(*args, **kw)
        ref_args = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        ref_kw = {n: (x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x)
                  for n, x in kw.items()}
        ref = naive_hstu_cached_attention(*ref_args, **ref_kw)
    err, low_err = (out.double() - ref).abs().max().item(), (low.double() - ref).abs().max().item()
    assert err <= 2 * low_err + 1e-3 * max(1.0, ref.abs().max().item())
    compiled = torch.compile(lambda *a: cached_cuda_impl.hstu_cached_attention_cuda(*a, **kw), fullgraph=True,
                             backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), out)
