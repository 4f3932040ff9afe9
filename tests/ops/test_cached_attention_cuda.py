"""GPU tier of the CUDA backend of ``hstu_cached_attention`` (M-FALCON scoring; ``@pytest.mark.gpu``, skipped
without a CUDA device or without the built extension).

- the parity grid against the naive op in float64 under the 2x rule, bf16 and fp16, head dims 64 and 128, with
  cold-start users, users without candidates, windows, shared tables, NaN-poisoned allocations;
- the M-FALCON identity: the candidate rows of ``hstu_attention`` on history + candidates (as targets);
- agreement with the Triton kernel; declining when a gradient is being recorded.

The CPU tier of the same kernel: tests/ops/test_cuda_emulated.py.
"""

import pytest
import torch

from hstu_kernels.ops.hstu_attention import cuda_impl as attention_cuda
from hstu_kernels.ops.hstu_cached_attention import cuda_impl
from hstu_kernels.ops.hstu_cached_attention.naive import naive_hstu_cached_attention

HAS_CUDA = torch.cuda.is_available()
BUILT, WHY = attention_cuda.available() if HAS_CUDA else (False, "no CUDA device")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not (HAS_CUDA and BUILT), reason=f"needs a CUDA device and "
                                                  f"the extension ({WHY})")]

ATOL = {torch.float16: 1e-4, torch.bfloat16: 1e-3}
NAMES = ("q", "k", "v", "cand_offsets", "k_cache", "v_cache", "cache_offsets", "max_seq_len")


def make_cached(cands, hists, *, H=2, D=128, max_seq_len=None, Hb=None, pos=True, time=True, qts=False,
                boundaries=(3600, 86400, 604800, 2592000), t_range=10_000_000, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    C, Lh = sum(cands), sum(hists)
    max_seq_len = max_seq_len or max(hists + [0]) + 1
    Hb = H if Hb is None else Hb

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype).cuda()

    b = dict(q=rnd(C, H, D), k=rnd(C, H, D), v=rnd(C, H, D), cand_offsets=torch.tensor([0] + list(cands)).cumsum(0),
             k_cache=rnd(Lh, H, D), v_cache=rnd(Lh, H, D), cache_offsets=torch.tensor([0] + list(hists)).cumsum(0),
             max_seq_len=max_seq_len)
    if pos:
        b["pos_weight"] = 0.5 * rnd(Hb, 2 * max_seq_len - 1)
    if time:
        t0 = 1_700_000_000
        b["timestamps"] = t0 + torch.randint(0, t_range, (C,), generator=g)
        b["cache_timestamps"] = t0 + torch.randint(0, t_range, (Lh,), generator=g)
        if qts:
            b["query_timestamps"] = t0 + torch.randint(0, t_range, (C,), generator=g)
        b["time_boundaries"] = torch.tensor(boundaries, dtype=torch.int64)
        b["time_weight"] = 0.5 * rnd(Hb, len(boundaries) + 1)
    return {n: (x.cuda() if isinstance(x, torch.Tensor) else x) for n, x in b.items()}


def split(batch):
    return [batch[n] for n in NAMES], {n: x for n, x in batch.items() if n not in NAMES}


@torch.no_grad()
def assert_two_x_rule(batch, **options):
    args, kw = split(batch)
    dtype = batch["q"].dtype
    out = cuda_impl.hstu_cached_attention_cuda(*args, **kw, **options)
    low = naive_hstu_cached_attention(*args, **kw, **options)
    ref = naive_hstu_cached_attention(*[a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                                        for a in args],
                                      **{n: (x.double() if x.is_floating_point() else x) for n, x in kw.items()},
                                      **options)
    assert out.dtype == dtype and torch.isfinite(out).all()
    err, low_err = (out.double() - ref).abs().max().item(), (low.double() - ref).abs().max().item()
    atol = ATOL[dtype] * max(1.0, ref.abs().max().item())
    assert err <= 2 * low_err + atol, f"error {err:.3g} > 2 x naive's {low_err:.3g} + {atol:.3g}"
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("window", [0, 500])
def test_two_x_rule(poisoned_empty, dtype, D, window):
    cands = [1024, 0, 3, 700, 64]
    hists = [4000, 100, 0, 1999, 64]  # a cold-start user, a user without candidates
    assert_two_x_rule(make_cached(cands, hists, D=D, dtype=dtype, qts=True, max_seq_len=4096), max_attn_len=window)


def test_shared_tables_and_no_bias():
    assert_two_x_rule(make_cached([100, 300], [600, 50], Hb=1), alpha=0.5)
    assert_two_x_rule(make_cached([100, 300], [600, 50], pos=False, time=False))


@torch.no_grad()
def test_matches_candidate_rows_of_hstu_attention():
    """M-FALCON: scoring against the cache equals hstu_attention on history + candidates with num_targets."""
    from hstu_kernels.ops.hstu_attention.naive import naive_hstu_attention

    b = make_cached([5, 40], [77, 130], D=64, max_seq_len=200, time=False)
    co, ho = b["cand_offsets"].tolist(), b["cache_offsets"].tolist()
    users = range(len(co) - 1)

    def seq(cache_name, cand_name):  # per user: history rows, then the candidates' rows
        return torch.cat([torch.cat([b[cache_name][ho[u]:ho[u + 1]], b[cand_name][co[u]:co[u + 1]]]) for u in users])

    # the history's queries do not affect the candidate rows: any values do
    q, k, v = seq("k_cache", "q"), seq("k_cache", "k"), seq("v_cache", "v")
    hist = [ho[u + 1] - ho[u] for u in users]
    cands = [co[u + 1] - co[u] for u in users]
    offsets = torch.tensor([0] + [m + c for m, c in zip(hist, cands)]).cumsum(0).cuda()
    full = naive_hstu_attention(q.double(), k.double(), v.double(), offsets, 200, pos_weight=b["pos_weight"].double(),
                                num_targets=torch.tensor(cands).cuda())
    want = torch.cat([full[int(offsets[u]) + hist[u]:int(offsets[u + 1])] for u in users])
    args, kw = split(b)
    out = cuda_impl.hstu_cached_attention_cuda(*args, **kw)
    assert (out.double() - want).abs().max().item() < 2e-2 * max(1.0, want.abs().max().item())


@torch.no_grad()
def test_agrees_with_triton():
    pytest.importorskip("triton")
    from hstu_kernels.ops.hstu_cached_attention import triton_impl

    b = make_cached([256, 512], [1000, 3000], D=128, max_seq_len=4096, qts=True)
    args, kw = split(b)
    out_c = cuda_impl.hstu_cached_attention_cuda(*args, **kw, max_attn_len=1500)
    out_t = triton_impl.hstu_cached_attention_triton(*args, **kw, max_attn_len=1500)
    assert (out_c.float() - out_t.float()).abs().max().item() < 2e-2 * max(1.0, out_t.abs().max().item())


def test_declines_gradients():
    b = make_cached([3], [10], D=64)
    q = b["q"].clone().requires_grad_(True)
    reasons = cuda_impl.unsupported_reasons(q, b["k"], b["v"], needs_grad=True)
    assert any("no backward" in r for r in reasons)
