"""The CUDA backend's index math (``csrc/include/hstu/{mask,bias,numeric}.h``) compiled by the host compiler.

A small C++ driver (``tests/ops/cuda_host/host_math_driver.cpp``) built with g++ answers queries on stdin; the
answers are checked against the naive op on random cases:

- ``pair_valid`` against the mask the naive op itself applies (read off its output with q = k = 1, v = identity);
- ``pos_bias_index`` against the naive op's clamped relative index, ``time_bucket`` against
  ``torch.bucketize(right=True)``;
- the key tiles of every query block (forward, dq) and the query tiles of every key block (dk/dv): every valid
  pair is visited exactly once, every visited tile holds a valid pair, tiles flagged "all valid" hold only
  real valid pairs;
- fp32 -> bf16 / fp16 rounding against torch's.

Skipped (with the reason) when there is no host C++ compiler.
"""

import random

import pytest
import torch
from cuda_host import build as cbuild

from hstu_kernels.ops.hstu_attention.naive import naive_hstu_attention

pytestmark = pytest.mark.skipif(cbuild.host_compiler() is None, reason="no host C++ compiler (g++ or $CXX)")


@pytest.fixture(scope="module")
def driver():
    exe = cbuild.build("host_math_driver.cpp")

    def ask(lines):
        out = cbuild.run(exe, "\n".join(lines) + "\n").splitlines()
        assert len(out) == len(lines)
        return out

    return ask


def naive_mask(n, t, w):
    """valid[i, j] as the naive op applies it: out[i, j] = silu(1) * valid(i, j) with q = k = 1, v = identity."""
    u = n - t
    q = torch.ones(n, 1, 1, dtype=torch.float64)
    v = torch.eye(n, dtype=torch.float64)[:, None, :]
    offsets = torch.tensor([0, n])
    max_seq_len = min(n - 1, u) + 1
    out = naive_hstu_attention(q, q, v, offsets, max_seq_len, scale=1.0, num_targets=torch.tensor([t]),
                               max_attn_len=w)
    return out[:, 0, :] != 0


def random_cases(seed, count):
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        n = rng.choice([1, 2, 3, 7, 16, 17, 31, 33, 64, 65, 100, 130])
        t = rng.choice([0, 0, 1, rng.randint(0, n)])
        w = rng.choice([0, 0, 1, 2, 5, 16, rng.randint(1, 40)])
        cases.append((n, min(t, n), w))
    return cases


@pytest.mark.parametrize("seed", range(3))
def test_pair_valid_matches_naive_mask(driver, seed):
    cases = random_cases(seed, 12) + [(6, 2, 0), (1, 1, 0), (5, 5, 1), (9, 0, 3)]
    answers = driver([f"V {n} {n - t} {w}" for n, t, w in cases])
    for (n, t, w), ans in zip(cases, answers):
        got = torch.tensor([c == "1" for c in ans]).view(n, n)
        want = naive_mask(n, t, w)
        assert torch.equal(got, want), f"n={n} t={t} w={w}\n{got.int()}\n{want.int()}"


def test_pos_bias_index_matches_naive():
    rng = random.Random(0)
    queries, want = [], []
    for _ in range(400):
        N = rng.randint(1, 50)
        pi, pj = rng.randint(0, N), rng.randint(0, N)  # p == N happens for padded keys without targets
        queries.append(f"P {N} {pi} {pj}")
        # naive.py: rel = (p_i - p_j + max_seq_len - 1).clamp_(0, 2 * max_seq_len - 2)
        want.append(str(max(0, min(pi - pj + N - 1, 2 * N - 2))))
    exe = cbuild.build("host_math_driver.cpp")
    assert cbuild.run(exe, "\n".join(queries) + "\n").splitlines() == want


def test_time_bucket_matches_bucketize(driver):
    rng = random.Random(1)
    queries, want = [], []
    for _ in range(300):
        nb = rng.randint(0, 16)
        b = sorted(rng.choice([rng.randint(0, 100), rng.randint(0, 2**40), 2**62]) for _ in range(nb))
        dt = rng.choice([0, rng.randint(0, 120), rng.randint(0, 2**41), *(b[:1] or [0]), 2**62])
        queries.append(" ".join(["T", str(nb), *map(str, b), str(dt)]))
        got = torch.bucketize(torch.tensor([dt]), torch.tensor(b, dtype=torch.int64), right=True)
        want.append(str(int(got)))
    assert driver(queries) == want


def parse_tiles(line):
    return [tuple(int(x) for x in tok.split(":")) for tok in line.split()]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("blocks", [(16, 16), (64, 64), (32, 128), (128, 64), (16, 64)])
def test_key_tiles_cover_each_valid_pair_once(driver, seed, blocks):
    bm, bn = blocks
    for n, t, w in random_cases(100 + seed, 10) + [(130, 30, 0), (130, 30, 7), (65, 64, 3)]:
        valid = naive_mask(n, t, w)
        starts = list(range(0, n, bm))
        answers = driver([f"K {m0} {bm} {n} {n - t} {w} {bn}" for m0 in starts])
        for m0, ans in zip(starts, answers):
            m1 = min(m0 + bm, n)
            seen = torch.zeros(m1 - m0, n + 2 * bn, dtype=torch.int64)
            for s, full in parse_tiles(ans):
                assert 0 <= s < n, (n, t, w, m0, s)
                tile = valid[m0:m1, s:min(s + bn, n)]
                assert tile.any(), f"tile {s} of block {m0} holds no valid pair (n={n} t={t} w={w})"
                if full:
                    assert m0 + bm <= n and s + bn <= n and tile.all(), (n, t, w, m0, s)
                seen[:, s:s + bn] += 1
            seen = seen[:, :n]
            assert torch.equal(seen[valid[m0:m1]], torch.ones_like(seen[valid[m0:m1]])), (n, t, w, m0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("blocks", [(16, 16), (64, 128), (32, 128), (64, 64)])
def test_query_tiles_cover_each_valid_pair_once(driver, seed, blocks):
    bm, bn = blocks
    for n, t, w in random_cases(200 + seed, 10) + [(130, 30, 0), (130, 30, 7), (65, 64, 3)]:
        valid = naive_mask(n, t, w)
        starts = list(range(0, n, bn))
        answers = driver([f"Q {n0} {bn} {n} {n - t} {w} {bm}" for n0 in starts])
        for n0, ans in zip(starts, answers):
            n1 = min(n0 + bn, n)
            seen = torch.zeros(n + 2 * bm, n1 - n0, dtype=torch.int64)
            for s, full in parse_tiles(ans):
                assert 0 <= s < n, (n, t, w, n0, s)
                tile = valid[s:min(s + bm, n), n0:n1]
                assert tile.any(), f"query tile {s} of key block {n0} holds no valid pair (n={n} t={t} w={w})"
                if full:
                    assert n0 + bn <= n and s + bm <= n and tile.all(), (n, t, w, n0, s)
                seen[s:s + bm, :] += 1
            seen = seen[:n]
            cols = valid[:, n0:n1]
            assert torch.equal(seen[cols], torch.ones_like(seen[cols])), (n, t, w, n0)


def test_float_conversions_round_like_torch(driver):
    g = torch.Generator().manual_seed(0)
    values = torch.cat([
        torch.randn(2000, generator=g) * 10.0 ** torch.randint(-9, 6, (2000,), generator=g),
        torch.tensor([0.0, -0.0, 1.0, 65504.0, 65519.0, 65520.0, 1e6, -1e6, 6e-8, 3e-8, 2.98e-8, 6.1e-5,
                      float("inf"), -float("inf"), 1.00390625, 1.01171875, 3.0e38]),
    ]).float()
    bits = values.view(torch.int32).tolist()
    answers = driver([f"C {b & 0xFFFFFFFF}" for b in bits])
    for x, ans in zip(values, answers):
        b, h, bf, hf = (int(a, 16) for a in ans.split())
        want_b = x.to(torch.bfloat16).view(torch.int16).item() & 0xFFFF
        want_h = x.to(torch.float16).view(torch.int16).item() & 0xFFFF
        assert b == want_b, (x.item(), hex(b), hex(want_b))
        assert h == want_h, (x.item(), hex(h), hex(want_h))
        back_b = torch.tensor([want_b], dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
        back_h = torch.tensor([want_h], dtype=torch.int32).to(torch.int16).view(torch.float16).float()
        assert bf == back_b.view(torch.int32).item() & 0xFFFFFFFF, x.item()
        assert hf == back_h.view(torch.int32).item() & 0xFFFFFFFF, x.item()
    nan = driver([f"C {0x7FC00001}"])[0].split()
    assert int(nan[0], 16) & 0x7F80 == 0x7F80 and int(nan[0], 16) & 0x7F and int(nan[1], 16) & 0x7C00 == 0x7C00
