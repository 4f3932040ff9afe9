"""The ops' non-finite contract (``hstu_attention/naive.py``), on every backend this machine can run.

A masked pair contributes exactly nothing, whatever its values hold: a NaN or Inf that only masked pairs reach
(a future key, a key outside the window, another target, a time bucket only masked pairs fall in, a history key
outside the cached op's window) leaves every row finite and equal to the output with that value replaced by a
finite one. A non-finite value a row sees makes that row non-finite. fp16 on the fast backends keeps
``SiLU(s) * scale`` (not ``SiLU(s)``) in range.
"""

import pytest
import torch

from hstu_kernels import hstu_attention, hstu_cached_attention
from hstu_kernels.ops.hstu_attention import backend_reasons
from hstu_kernels.ops.hstu_cached_attention import backend_reasons as cached_reasons

NAN, INF = float("nan"), float("inf")


def _backends(reasons):
    x = torch.zeros(2, 1, 16)
    return [name for name, why in reasons(x, x, x).items() if not why]


BACKENDS = _backends(backend_reasons)
CACHED_BACKENDS = _backends(cached_reasons)


def attention_batch(seed=0, targets=(2, 0), lengths=(7, 5), D=16):
    """Two sequences; sequence 0 has n = 7 with 2 targets (history positions 0..4, targets at rows 5 and 6)."""
    g = torch.Generator().manual_seed(seed)
    L, H = sum(lengths), 2
    return dict(
        q=torch.randn(L, H, D, generator=g), k=torch.randn(L, H, D, generator=g),
        v=torch.randn(L, H, D, generator=g),
        seq_offsets=torch.tensor([0, lengths[0], L]), max_seq_len=8,
        pos_weight=0.5 * torch.randn(H, 15, generator=g),
        num_targets=torch.tensor(targets),
    )


def run(batch, backend, **kw):
    with torch.no_grad():
        return hstu_attention(**batch, backend=backend, **kw)


def poisoned(batch, name, index, value):
    out = dict(batch)
    out[name] = batch[name].clone()
    out[name][index] = value
    return out


def assert_contract(batch, name, index, seen_rows, backend, **kw):
    """NaN / Inf at batch[name][index]: rows in ``seen_rows`` (sequence-0 rows) are non-finite, every other row
    equals the output with a finite value there."""
    clean = run(poisoned(batch, name, index, 0.25), backend, **kw)
    assert torch.isfinite(clean).all()
    for value in (NAN, INF, -INF):
        got = run(poisoned(batch, name, index, value), backend, **kw)
        rows = torch.isfinite(got).flatten(1).all(1)
        want_rows = torch.ones_like(rows)
        want_rows[list(seen_rows)] = False
        assert rows.tolist() == want_rows.tolist(), (value, rows.tolist())
        torch.testing.assert_close(got[want_rows], clean[want_rows], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["v", "k"])
def test_future_key(backend, name):
    # history key 4 is seen by row 4 and both targets (5, 6), never by rows 0..3
    assert_contract(attention_batch(), name, 4, {4, 5, 6}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["v", "k"])
def test_key_outside_the_window(backend, name):
    # window 2: key 0 is seen by rows 0..2 only (targets sit at position 5)
    assert_contract(attention_batch(), name, 0, {0, 1, 2}, backend, max_attn_len=2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["v", "k"])
def test_other_target(backend, name):
    # target row 6 is seen by itself only: target 5 never sees it
    assert_contract(attention_batch(), name, 6, {6}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_time_bucket_only_masked_pairs_reach(backend):
    # times 0, 1000, 2000, ...: with window 1 visible pairs are 0 or 1000 apart; bucket 2 (>= 1500) is masked only
    batch = attention_batch(targets=(0, 0))
    batch.update(timestamps=torch.cat([torch.arange(7), torch.arange(5)]) * 1000,
                 time_boundaries=torch.tensor([500, 1500]), time_weight=torch.randn(2, 3))
    for value in (NAN, INF, -INF):
        got = run(poisoned(batch, "time_weight", (slice(None), 2), value), backend, max_attn_len=1)
        clean = run(poisoned(batch, "time_weight", (slice(None), 2), 0.5), backend, max_attn_len=1)
        assert torch.isfinite(got).all(), value
        torch.testing.assert_close(got, clean, atol=1e-5, rtol=1e-5)
    # bucket 1 is seen (the previous key): every row but each sequence's first is non-finite
    got = run(poisoned(batch, "time_weight", (slice(None), 1), NAN), backend, max_attn_len=1)
    rows = torch.isfinite(got).flatten(1).all(1)
    assert rows.tolist() == [True] + [False] * 6 + [True] + [False] * 4


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_fp16_silu_times_scale_stays_in_range(backend):
    """SiLU(s) = 78400 > 65504 (fp16's largest), but SiLU(s) * scale and the output fit in fp16."""
    batch = attention_batch(targets=(0, 0))
    for name in ("q", "k"):
        batch[name] = torch.full_like(batch[name], 70.0)
    batch["v"] = 0.001 * batch["v"]
    batch["pos_weight"] = torch.zeros_like(batch["pos_weight"])
    half = {n: (x.half() if n in ("q", "k", "v") else x) for n, x in batch.items()}
    want = run({n: (x.double() if n in ("q", "k", "v") else x) for n, x in half.items()}, "torch")
    got = run(half, backend)
    assert torch.isfinite(got).all()
    assert (got.double() - want).abs().max() <= 2e-3 * want.abs().max()


# ---------------------------------------------------------------------------------------------------------------
# the cached (M-FALCON) op
# ---------------------------------------------------------------------------------------------------------------
def cached_case(seed=0):
    """User 0: history 6, 3 candidates; user 1: history 4, 2 candidates; window 2 (history keys 4, 5 of user 0)."""
    g = torch.Generator().manual_seed(seed)
    H, D = 2, 16
    return dict(
        q=torch.randn(5, H, D, generator=g), k=torch.randn(5, H, D, generator=g), v=torch.randn(5, H, D, generator=g),
        cand_offsets=torch.tensor([0, 3, 5]), k_cache=torch.randn(10, H, D, generator=g),
        v_cache=torch.randn(10, H, D, generator=g), cache_offsets=torch.tensor([0, 6, 10]), max_seq_len=8,
        pos_weight=0.5 * torch.randn(H, 15, generator=g), max_attn_len=2,
    )


@pytest.mark.parametrize("backend", CACHED_BACKENDS)
@pytest.mark.parametrize("name", ["v_cache", "k_cache"])
def test_cached_key_outside_the_window(backend, name):
    a = cached_case()
    with torch.no_grad():
        clean = hstu_cached_attention(**poisoned(a, name, 1, 0.5), backend=backend)
        for value in (NAN, INF):
            got = hstu_cached_attention(**poisoned(a, name, 1, value), backend=backend)
            assert torch.isfinite(got).all(), value
            torch.testing.assert_close(got, clean, atol=1e-5, rtol=1e-5)
        # key 5 of user 0 is in the window: user 0's candidates (rows 0..2) see it
        got = hstu_cached_attention(**poisoned(a, name, 5, NAN), backend=backend)
        assert torch.isfinite(got).flatten(1).all(1).tolist() == [False, False, False, True, True]


@pytest.mark.parametrize("backend", CACHED_BACKENDS)
def test_cached_time_bucket_only_masked_keys_reach(backend):
    a = cached_case()
    # user 0's out-of-window history (keys 0..3) is far in the past: only it falls in bucket 2
    a.update(timestamps=torch.full((5,), 10_000), cache_timestamps=torch.tensor([0, 0, 0, 0, 9_990, 9_995] + [9_999] * 4),
             time_boundaries=torch.tensor([5, 1000]), time_weight=torch.randn(2, 3))
    with torch.no_grad():
        clean = hstu_cached_attention(**poisoned(a, "time_weight", (slice(None), 2), 0.5), backend=backend)
        got = hstu_cached_attention(**poisoned(a, "time_weight", (slice(None), 2), INF), backend=backend)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, clean, atol=1e-5, rtol=1e-5)


def test_meta_tensors_get_a_clear_error():
    q = torch.empty(5, 1, 16, device="meta")
    with pytest.raises(ValueError, match="q is on the meta device"):
        hstu_attention(q, q, q, torch.tensor([0, 5]), 8)
    with pytest.raises(ValueError, match="q is on the meta device"):
        hstu_cached_attention(q, q, q, torch.tensor([0, 5]), q, q, torch.tensor([0, 5]), 8)
