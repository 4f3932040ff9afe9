"""The naive op against a direct float64 loop over the definition, plus its argument checks and dispatch."""

import math

import pytest
import torch

from hstu_kernels import hstu_attention, naive_hstu_attention
from hstu_kernels.ops.hstu_attention import naive_hstu_attention_padded
from hstu_kernels import jagged_to_padded

BOUNDARIES = [5, 20, 60]


def loop_reference(q, k, v, offsets, M, alpha=1.0, scale=None, ts=None, qts=None, pw=None, tw=None, tb=None,
                   nt=None, window=0):
    """The op's definition, one (sequence, head, i, j) at a time, in float64."""
    scale = 1.0 / M if scale is None else scale
    qts = ts if qts is None else qts
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float64)
    H = q.shape[1]
    for b in range(len(offsets) - 1):
        s0, n = int(offsets[b]), int(offsets[b + 1] - offsets[b])
        u = n - (int(nt[b]) if nt is not None else 0)
        p = [min(i, u) for i in range(n)]
        for h in range(H):
            for i in range(n):
                acc = torch.zeros(v.shape[2], dtype=torch.float64)
                for j in range(n):
                    ok = j == i or (p[j] < p[i] and (window == 0 or p[i] - p[j] <= window))
                    if not ok:
                        continue
                    s = alpha * float((q[s0 + i, h].double() * k[s0 + j, h].double()).sum())
                    if pw is not None:
                        s += float(pw[h if pw.shape[0] > 1 else 0, p[i] - p[j] + M - 1])
                    if tw is not None:
                        dt = abs(int(qts[s0 + i]) - int(ts[s0 + j]))
                        bucket = sum(1 for x in tb.tolist() if x <= dt)
                        s += float(tw[h if tw.shape[0] > 1 else 0, bucket])
                    acc += s / (1 + math.exp(-s)) * v[s0 + j, h].double()
                out[s0 + i, h] = scale * acc
    return out


def make_inputs(lengths, H=2, D=4, Dv=3, M=8, targets=None, per_head=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = sum(lengths)
    offsets = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    Hb = H if per_head else 1
    return dict(
        q=torch.randn(L, H, D, generator=g, dtype=torch.float64),
        k=torch.randn(L, H, D, generator=g, dtype=torch.float64),
        v=torch.randn(L, H, Dv, generator=g, dtype=torch.float64),
        seq_offsets=offsets,
        max_seq_len=M,
        timestamps=torch.randint(0, 100, (L,), generator=g),
        pos_weight=torch.randn(Hb, 2 * M - 1, generator=g, dtype=torch.float64),
        time_weight=torch.randn(Hb, len(BOUNDARIES) + 1, generator=g, dtype=torch.float64),
        time_boundaries=torch.tensor(BOUNDARIES),
        num_targets=None if targets is None else torch.tensor(targets, dtype=torch.int64),
    )


OPTIONS = {
    "plain": dict(bias=(), targets=False, window=0),
    "pos": dict(bias=("pos",), targets=False, window=0),
    "time": dict(bias=("time",), targets=False, window=0),
    "both": dict(bias=("pos", "time"), targets=False, window=0),
    "targets": dict(bias=(), targets=True, window=0),
    "window": dict(bias=(), targets=False, window=2),
    "all": dict(bias=("pos", "time"), targets=True, window=2),
}


@pytest.mark.parametrize("per_head", [True, False])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_naive_matches_loop(option, per_head):
    o = OPTIONS[option]
    lengths = [5, 0, 1, 7, 3]
    targets = [2, 0, 1, 3, 0] if o["targets"] else None
    x = make_inputs(lengths, targets=targets, per_head=per_head)
    kw = dict(alpha=0.7, max_attn_len=o["window"], num_targets=x["num_targets"])
    if "pos" in o["bias"]:
        kw["pos_weight"] = x["pos_weight"]
    if "time" in o["bias"]:
        kw.update(timestamps=x["timestamps"], time_weight=x["time_weight"], time_boundaries=x["time_boundaries"])
    got = hstu_attention(x["q"], x["k"], x["v"], x["seq_offsets"], x["max_seq_len"], backend="torch", **kw)
    want = loop_reference(
        x["q"], x["k"], x["v"], x["seq_offsets"], x["max_seq_len"], alpha=0.7, ts=kw.get("timestamps"),
        pw=kw.get("pos_weight"), tw=kw.get("time_weight"), tb=kw.get("time_boundaries"), nt=x["num_targets"],
        window=o["window"],
    )
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_query_timestamps_and_scale():
    x = make_inputs([4, 6], per_head=False)
    qts = x["timestamps"] + torch.arange(10) * 7
    got = hstu_attention(
        x["q"], x["k"], x["v"], x["seq_offsets"], 8, scale=0.3, timestamps=x["timestamps"], query_timestamps=qts,
        time_weight=x["time_weight"], time_boundaries=x["time_boundaries"],
    )
    want = loop_reference(x["q"], x["k"], x["v"], x["seq_offsets"], 8, scale=0.3, ts=x["timestamps"], qts=qts,
                          tw=x["time_weight"], tb=x["time_boundaries"])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_targets_see_history_and_themselves_only():
    # changing one target's k/v must not move the other targets' or the history's outputs
    x = make_inputs([6], targets=[3])
    args = (x["seq_offsets"], 8)
    base = hstu_attention(x["q"], x["k"], x["v"], *args, num_targets=x["num_targets"])
    k2, v2 = x["k"].clone(), x["v"].clone()
    k2[4] += 1.0
    v2[4] += 1.0
    moved = hstu_attention(x["q"], k2, v2, *args, num_targets=x["num_targets"])
    changed = (moved - base).abs().amax(dim=(1, 2)) > 0
    assert changed.tolist() == [False, False, False, False, True, False]


def test_sequence_longer_than_max_seq_len_with_targets():
    # n = 10 > max_seq_len = 8, but with 4 targets every position stays below 8
    x = make_inputs([10], targets=[4], M=8)
    got = hstu_attention(x["q"], x["k"], x["v"], x["seq_offsets"], 8, pos_weight=x["pos_weight"],
                         num_targets=x["num_targets"])
    want = loop_reference(x["q"], x["k"], x["v"], x["seq_offsets"], 8, pw=x["pos_weight"], nt=x["num_targets"])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_gradients_flow_to_every_input():
    x = make_inputs([5, 3], targets=[1, 0])
    leaves = {n: x[n].clone().requires_grad_() for n in ("q", "k", "v", "pos_weight", "time_weight")}
    out = hstu_attention(leaves["q"], leaves["k"], leaves["v"], x["seq_offsets"], 8, timestamps=x["timestamps"],
                         pos_weight=leaves["pos_weight"], time_weight=leaves["time_weight"],
                         time_boundaries=x["time_boundaries"], num_targets=x["num_targets"])
    out.square().sum().backward()
    for name, leaf in leaves.items():
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0, name

    def f(q, k, v, pw, tw):
        return hstu_attention(q, k, v, x["seq_offsets"], 8, timestamps=x["timestamps"], pos_weight=pw,
                              time_weight=tw, time_boundaries=x["time_boundaries"], num_targets=x["num_targets"])

    assert torch.autograd.gradcheck(f, tuple(leaves[n].detach().requires_grad_() for n in leaves))


def test_empty_batch_and_empty_sequences():
    q = torch.zeros(0, 2, 4)
    assert hstu_attention(q, q, q, torch.tensor([0]), 8).shape == (0, 2, 4)
    assert hstu_attention(q, q, q, torch.tensor([0, 0, 0]), 8).shape == (0, 2, 4)


def test_low_precision_output_dtype():
    x = make_inputs([5, 2])
    q, k, v = (x[n].to(torch.bfloat16) for n in ("q", "k", "v"))
    out = hstu_attention(q, k, v, x["seq_offsets"], 8, pos_weight=x["pos_weight"].float())
    assert out.dtype == torch.bfloat16


def test_padded_op_matches_jagged_op_and_ignores_padding():
    x = make_inputs([5, 0, 3], targets=[2, 0, 1])
    kw = dict(pos_weight=x["pos_weight"], time_weight=x["time_weight"], time_boundaries=x["time_boundaries"],
              num_targets=x["num_targets"], max_attn_len=3)
    jag = naive_hstu_attention(x["q"], x["k"], x["v"], x["seq_offsets"], 8, timestamps=x["timestamps"], **kw)
    pad = {n: jagged_to_padded(x[n], x["seq_offsets"], 6, pad_value=float("nan"))[0] for n in ("q", "k", "v")}
    ts = jagged_to_padded(x["timestamps"], x["seq_offsets"], 6, pad_value=12345)[0]
    lengths = x["seq_offsets"].diff()
    out = naive_hstu_attention_padded(pad["q"], pad["k"], pad["v"], lengths, 8, timestamps=ts, **kw)
    mask = torch.arange(6)[None] < lengths[:, None]
    torch.testing.assert_close(out[mask], jag)
    assert (out[~mask] == 0).all()


# --- argument checks -------------------------------------------------------------------------------------

def _args(**over):
    x = make_inputs([3, 2], targets=[1, 0])
    base = dict(q=x["q"], k=x["k"], v=x["v"], seq_offsets=x["seq_offsets"], max_seq_len=8)
    base.update(over)
    return base


@pytest.mark.parametrize("over, exc, words", [
    (dict(q=torch.zeros(5, 2, 4, dtype=torch.int32)), TypeError, "q must be a floating"),
    (dict(q=[1, 2]), TypeError, "q must be a torch.Tensor"),
    (dict(k=torch.zeros(5, 2, 5, dtype=torch.float64)), ValueError, "k must have q's shape"),
    (dict(v=torch.zeros(4, 2, 3, dtype=torch.float64)), ValueError, "v must have shape"),
    (dict(k=torch.zeros(5, 2, 4, dtype=torch.float32)), TypeError, "share one dtype"),
    (dict(q=torch.zeros(5, 8, dtype=torch.float64)), ValueError, "q must have 3 dimensions"),
    (dict(seq_offsets=torch.tensor([0.0, 3.0, 5.0])), TypeError, "seq_offsets must be an integer"),
    (dict(seq_offsets=torch.tensor([0, 3, 4])), ValueError, "seq_offsets[-1] != L"),
    (dict(seq_offsets=torch.tensor([1, 3, 5])), ValueError, "seq_offsets[0] != 0"),
    (dict(seq_offsets=torch.tensor([0, 4, 3, 5])), ValueError, "seq_offsets decreases"),
    (dict(max_seq_len=0), ValueError, "max_seq_len must be a positive int"),
    (dict(max_seq_len=2), ValueError, "position p(i) >= max_seq_len"),
    (dict(max_attn_len=-1), ValueError, "max_attn_len"),
    (dict(num_targets=torch.tensor([4, 0])), ValueError, "num_targets has a value"),
    (dict(num_targets=torch.tensor([-1, 0])), ValueError, "num_targets has a value"),
    (dict(num_targets=torch.tensor([1])), ValueError, "num_targets must have shape [B]"),
    (dict(timestamps=torch.tensor([1, 2, -3, 4, 5])), ValueError, "timestamps has a negative value"),
    (dict(timestamps=torch.zeros(4, dtype=torch.int64)), ValueError, "timestamps must have shape [L]"),
    (dict(timestamps=torch.zeros(5)), TypeError, "timestamps must be an integer"),
    (dict(query_timestamps=torch.zeros(5, dtype=torch.int64)), ValueError, "query_timestamps needs timestamps"),
    (dict(pos_weight=torch.zeros(1, 14)), ValueError, "pos_weight must have shape"),
    (dict(pos_weight=torch.zeros(3, 15)), ValueError, "pos_weight must have shape"),
    (dict(time_weight=torch.zeros(1, 4)), ValueError, "time_weight needs timestamps and time_boundaries"),
    (dict(timestamps=torch.zeros(5, dtype=torch.int64), time_weight=torch.zeros(1, 3),
          time_boundaries=torch.tensor([1, 2, 3])), ValueError, "time_weight must have shape"),
    (dict(timestamps=torch.zeros(5, dtype=torch.int64), time_weight=torch.zeros(1, 4),
          time_boundaries=torch.tensor([1, 3, 2])), ValueError, "time_boundaries is not sorted"),
    (dict(time_boundaries=torch.tensor([1])), ValueError, "time_boundaries is given without time_weight"),
    (dict(backend="cuda-graph"), ValueError, "backend must be one of"),
    (dict(backend="triton", q=torch.zeros(5, 2, 4, dtype=torch.float64)), ValueError, "available: torch"),
])
def test_bad_arguments_raise_clear_errors(over, exc, words):
    with pytest.raises(exc) as info:
        hstu_attention(**_args(**over))
    assert words in str(info.value)


def test_check_false_gives_the_same_result():
    # check=False skips the host synchronisation, so the backend must find the longest sequence itself
    x = make_inputs([3, 6, 0], targets=[1, 2, 0])
    kw = dict(pos_weight=x["pos_weight"], num_targets=x["num_targets"])
    checked = hstu_attention(x["q"], x["k"], x["v"], x["seq_offsets"], 8, **kw)
    unchecked = hstu_attention(x["q"], x["k"], x["v"], x["seq_offsets"], 8, check=False, **kw)
    torch.testing.assert_close(checked, unchecked, rtol=0, atol=0)


def test_error_names_the_offending_sequence():
    with pytest.raises(ValueError, match=r"sequence 1: length 2, num_targets 3"):
        hstu_attention(**_args(num_targets=torch.tensor([0, 3])))


# --- property test over random batches -------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def batches(draw):
    M = draw(st.integers(2, 7))
    lengths = draw(st.lists(st.integers(0, M + 2), min_size=0, max_size=4))
    # every position must stay below M: a sequence longer than M needs t >= n - M + 1 targets
    targets = [draw(st.integers(n - M + 1 if n > M else 0, n)) for n in lengths]
    return M, lengths, targets, draw(st.integers(0, 3)), draw(st.booleans()), draw(st.integers(0, 2**16))


@settings(max_examples=40, deadline=None)
@given(batches())
def test_naive_matches_loop_on_random_batches(case):
    M, lengths, targets, window, per_head, seed = case
    x = make_inputs(lengths, M=M, targets=targets, per_head=per_head, seed=seed)
    got = hstu_attention(
        x["q"], x["k"], x["v"], x["seq_offsets"], M, timestamps=x["timestamps"], pos_weight=x["pos_weight"],
        time_weight=x["time_weight"], time_boundaries=x["time_boundaries"], num_targets=x["num_targets"],
        max_attn_len=window,
    )
    want = loop_reference(
        x["q"], x["k"], x["v"], x["seq_offsets"], M, ts=x["timestamps"], pw=x["pos_weight"], tw=x["time_weight"],
        tb=x["time_boundaries"], nt=x["num_targets"], window=window,
    )
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
