"""M-FALCON cached scoring: the cached op against the candidate rows of ``hstu_attention``, its argument checks,
and ``HSTUEncoder.prefill`` / ``score_candidates`` against the full target-aware forward."""

import pytest
import torch

from hstu.actions import NUM_ACTIONS, UNKNOWN
from hstu.encoder import HSTUEncoder
from hstu.jagged import lengths_to_offsets
from hstu.kv_cache import KVCache
from hstu.model import HSTURecommender, ModelConfig
from hstu_kernels import hstu_attention, hstu_cached_attention

F64 = torch.float64
BOUNDARIES = torch.tensor([5, 20, 60])
N = 8  # max_seq_len


def offsets(lengths):
    return lengths_to_offsets(torch.tensor(lengths, dtype=torch.int64))


def make_case(hist, cands, H=2, D=4, Hb=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    Lh, C = sum(hist), sum(cands)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)
    return dict(
        q=r(C, H, D), k=r(C, H, D), v=r(C, H, D + 1), kc=r(Lh, H, D), vc=r(Lh, H, D + 1),
        ts=torch.randint(0, 100, (C,), generator=g), qts=torch.randint(0, 100, (C,), generator=g),
        cts=torch.randint(0, 100, (Lh,), generator=g),
        pw=r(Hb, 2 * N - 1), tw=r(Hb, len(BOUNDARIES) + 1),
    )


def interleave(hist, cands, hist_rows, cand_rows):
    """Concatenate each user's history rows then candidate rows; return (values, candidate row index)."""
    parts, idx, pos, oh, oc = [], [], 0, 0, 0
    for m, n in zip(hist, cands):
        parts += [hist_rows[oh:oh + m], cand_rows[oc:oc + n]]
        idx += list(range(pos + m, pos + m + n))
        pos, oh, oc = pos + m + n, oh + m, oc + n
    return torch.cat(parts), torch.tensor(idx, dtype=torch.int64)


HIST = [0, 1, 5, 3, 7]
CANDS = [3, 1, 4, 0, 2]


@pytest.mark.parametrize("Hb", [1, 2])
@pytest.mark.parametrize("window", [0, 2])
@pytest.mark.parametrize("with_time", [False, True])
def test_cached_op_matches_candidate_rows_of_full_attention(Hb, window, with_time):
    c = make_case(HIST, CANDS, Hb=Hb)
    # history queries do not matter for candidate rows: any values do
    q, idx = interleave(HIST, CANDS, torch.full((sum(HIST), 2, 4), 0.5, dtype=F64), c["q"])
    k, _ = interleave(HIST, CANDS, c["kc"], c["k"])
    v, _ = interleave(HIST, CANDS, c["vc"], c["v"])
    full_offsets = offsets([m + n for m, n in zip(HIST, CANDS)])
    kw, ckw = {}, {}
    if with_time:
        ts, _ = interleave(HIST, CANDS, c["cts"], c["ts"])
        qts, _ = interleave(HIST, CANDS, c["cts"], c["qts"])
        kw = dict(timestamps=ts, query_timestamps=qts, time_weight=c["tw"], time_boundaries=BOUNDARIES)
        ckw = dict(timestamps=c["ts"], query_timestamps=c["qts"], cache_timestamps=c["cts"], time_weight=c["tw"],
                   time_boundaries=BOUNDARIES)
    full = hstu_attention(q, k, v, full_offsets, N, alpha=0.7, pos_weight=c["pw"], num_targets=torch.tensor(CANDS),
                          max_attn_len=window, backend="torch", **kw)
    got = hstu_cached_attention(c["q"], c["k"], c["v"], offsets(CANDS), c["kc"], c["vc"], offsets(HIST), N,
                                alpha=0.7, pos_weight=c["pw"], max_attn_len=window, **ckw)
    assert got.shape == (sum(CANDS), 2, 5) and got.dtype == F64
    torch.testing.assert_close(got, full[idx], rtol=1e-10, atol=1e-12)
    # check=False (no host sync) gives the same answer
    again = hstu_cached_attention(c["q"], c["k"], c["v"], offsets(CANDS), c["kc"], c["vc"], offsets(HIST), N,
                                  alpha=0.7, pos_weight=c["pw"], max_attn_len=window, check=False, **ckw)
    torch.testing.assert_close(again, got, rtol=0, atol=0)


def test_cached_op_edge_cases():
    # no candidates at all, and only cold-start users
    c = make_case([2, 0], [0, 0])
    out = hstu_cached_attention(c["q"], c["k"], c["v"], offsets([0, 0]), c["kc"], c["vc"], offsets([2, 0]), N)
    assert out.shape == (0, 2, 5)
    c = make_case([0, 0], [2, 1])
    out = hstu_cached_attention(c["q"], c["k"], c["v"], offsets([2, 1]), c["kc"], c["vc"], offsets([0, 0]), N)
    # only the self term: scale * SiLU(q . k) * v
    want = torch.nn.functional.silu((c["q"] * c["k"]).sum(-1))[..., None] * c["v"] / N
    torch.testing.assert_close(out, want)
    # float32 inputs stay float32
    out32 = hstu_cached_attention(c["q"].float(), c["k"].float(), c["v"].float(), offsets([2, 1]), c["kc"].float(),
                                  c["vc"].float(), offsets([0, 0]), N)
    assert out32.dtype == torch.float32


def test_cached_op_argument_errors():
    c = make_case([2, 3], [1, 2])
    args = lambda **o: {**dict(q=c["q"], k=c["k"], v=c["v"], cand_offsets=offsets([1, 2]), k_cache=c["kc"],
                               v_cache=c["vc"], cache_offsets=offsets([2, 3]), max_seq_len=N), **o}
    with pytest.raises(TypeError, match="k_cache must be a floating tensor"):
        hstu_cached_attention(**args(k_cache=c["kc"].long()))
    with pytest.raises(TypeError, match="share one dtype"):
        hstu_cached_attention(**args(v_cache=c["vc"].float()))
    with pytest.raises(ValueError, match="k_cache must have shape"):
        hstu_cached_attention(**args(k_cache=c["kc"][:, :1]))
    with pytest.raises(ValueError, match="both have B\\+1 entries"):
        hstu_cached_attention(**args(cache_offsets=offsets([5])))
    with pytest.raises(ValueError, match="cache_offsets\\[-1\\] != Lh = 5"):
        hstu_cached_attention(**args(cache_offsets=offsets([2, 2])))
    with pytest.raises(ValueError, match="history is longer than max_seq_len - 1 = 2.*user 1: history length 3"):
        hstu_cached_attention(**args(max_seq_len=3))
    with pytest.raises(ValueError, match="cache_timestamps must be given together"):
        hstu_cached_attention(**args(timestamps=c["ts"][:3]))
    with pytest.raises(ValueError, match="cache_timestamps has a negative value"):
        hstu_cached_attention(**args(timestamps=c["ts"][:3], cache_timestamps=-c["cts"][:5] - 1))
    with pytest.raises(ValueError, match="time_boundaries is not sorted"):
        hstu_cached_attention(**args(timestamps=c["ts"][:3], cache_timestamps=c["cts"][:5], time_weight=c["tw"],
                                     time_boundaries=BOUNDARIES.flip(0)))
    with pytest.raises(ValueError, match="'triton' cannot take these inputs.*float64 not supported.*available: torch"):
        hstu_cached_attention(**args(), backend="triton")
    with pytest.raises(ValueError, match="'cuda' cannot take these inputs.*CUDA extension is not built"):
        hstu_cached_attention(**args(), backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        hstu_cached_attention(**args(), backend="nope")


# ---------------------------------------------------------------- encoder: prefill + score_candidates

NUM_ITEMS = 40
EH = [4, 0, 1, 6]  # history lengths: a cold-start user among them
EC = [5, 3, 0, 7]  # candidates per user


def make_encoder(window=0, per_head=True, seed=0, **input_options):
    torch.manual_seed(seed)
    enc = HSTUEncoder(NUM_ITEMS, NUM_ACTIONS, dim=8, num_layers=2, num_heads=2, max_seq_len=N, dropout=0.0,
                      max_attn_len=window, per_head_bias=per_head, time_boundaries=(5, 20, 60),
                      **input_options).double().eval()
    with torch.no_grad():  # the bias tables start at zero: give them values so that they matter
        for block in enc.blocks:
            block.bias.pos_weight.normal_()
            block.bias.time_weight.normal_()
    return enc


def requests(hist=EH, cands=EC, seed=1):
    g = torch.Generator().manual_seed(seed)
    Lh, C = sum(hist), sum(cands)
    h = dict(items=torch.randint(1, NUM_ITEMS + 1, (Lh,), generator=g),
             actions=torch.randint(2, NUM_ACTIONS, (Lh,), generator=g),
             timestamps=torch.randint(0, 100, (Lh,), generator=g), seq_offsets=offsets(hist))
    c = dict(items=torch.randint(1, NUM_ITEMS + 1, (C,), generator=g), offsets=offsets(cands),
             timestamps=torch.randint(0, 100, (C,), generator=g))
    return h, c


def full_forward(enc, h, c, hist=EH, cands=EC, cand_ts=None):
    """The candidate rows of the encoder on each user's history followed by its candidates as targets."""
    items, idx = interleave(hist, cands, h["items"], c["items"])
    actions, _ = interleave(hist, cands, h["actions"], torch.full_like(c["items"], UNKNOWN))
    ts, _ = interleave(hist, cands, h["timestamps"], c["timestamps"] if cand_ts is None else cand_ts)
    full_offsets = offsets([m + n for m, n in zip(hist, cands)])
    with torch.no_grad():
        out = enc(items, actions, full_offsets, ts, num_targets=torch.tensor(cands))
    return out[idx]


def clone_cache(cache):
    return [t.clone() for t in [*cache.k, *cache.v, cache.seq_offsets, cache.lengths, cache.timestamps, cache.last_output]]


@pytest.mark.parametrize("window,per_head,inputs", [
    (0, True, {}), (3, False, {}), (0, True, dict(input_mode="sum", position_embedding=True)),
])
def test_score_candidates_matches_full_forward(window, per_head, inputs):
    enc = make_encoder(window, per_head, **inputs)
    h, c = requests()
    want = full_forward(enc, h, c)
    cache = enc.prefill(h["items"], h["actions"], h["seq_offsets"], h["timestamps"])
    assert isinstance(cache, KVCache) and cache.num_layers == 2 and cache.k[0].shape == (sum(EH), 2, 4)
    before = clone_cache(cache)
    for bm in (None, 1, 2, 3, 7, 100):
        got = enc.score_candidates(cache, c["items"], c["offsets"], c["timestamps"], microbatch_size=bm)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=f"microbatch_size={bm}")
    for a, b in zip(before, clone_cache(cache)):
        assert torch.equal(a, b)  # scoring never writes the cache
    # the last-history-position user vector: the full forward's row there (zeros for the cold-start user)
    with torch.no_grad():
        hist_out = enc(h["items"], h["actions"], h["seq_offsets"], h["timestamps"])
    last = torch.stack([hist_out[o - 1] if m else torch.zeros(8, dtype=F64)
                        for o, m in zip(h["seq_offsets"][1:].tolist(), EH)])
    torch.testing.assert_close(cache.last_output, last)
    # both layers matter: a one-layer model gives something else
    assert not torch.allclose(enc.blocks[1].forward_cached(
        enc.embedding(c["items"], torch.full_like(c["items"], UNKNOWN), torch.zeros_like(c["items"])), c["offsets"],
        cache.k[1], cache.v[1], cache.seq_offsets, c["timestamps"], None, cache.timestamps), want)


def test_score_candidates_default_times_and_query_times():
    enc = make_encoder()
    h, c = requests()
    cache = enc.prefill(h["items"], h["actions"], h["seq_offsets"], h["timestamps"])
    # default candidate time: each user's last history timestamp (0 for the cold-start user)
    last = [int(h["timestamps"][o - 1]) if m else 0 for o, m in zip(h["seq_offsets"][1:].tolist(), EH)]
    req = torch.repeat_interleave(torch.tensor(last), torch.tensor(EC))
    want = full_forward(enc, h, c, cand_ts=req)
    torch.testing.assert_close(enc.score_candidates(cache, c["items"], c["offsets"], microbatch_size=2), want)
    # query_timestamps != timestamps changes the time bias (and nothing else breaks)
    other = enc.score_candidates(cache, c["items"], c["offsets"], c["timestamps"], query_timestamps=req)
    assert not torch.allclose(other, enc.score_candidates(cache, c["items"], c["offsets"], c["timestamps"]))


def test_candidate_independence():
    enc = make_encoder()
    h, c = requests()
    cache = enc.prefill(h["items"], h["actions"], h["seq_offsets"], h["timestamps"])
    base = enc.score_candidates(cache, c["items"], c["offsets"], c["timestamps"])
    # permuting candidates within each user permutes the outputs
    g = torch.Generator().manual_seed(3)
    perm = torch.cat([o + torch.randperm(n, generator=g) for o, n in zip(c["offsets"][:-1].tolist(), EC)])
    got = enc.score_candidates(cache, c["items"][perm], c["offsets"], c["timestamps"][perm], microbatch_size=3)
    torch.testing.assert_close(got, base[perm], rtol=1e-12, atol=1e-14)
    # adding a candidate to user 0 changes no other candidate's output
    at = int(c["offsets"][1])
    items = torch.cat([c["items"][:at], torch.tensor([7]), c["items"][at:]])
    ts = torch.cat([c["timestamps"][:at], torch.tensor([50]), c["timestamps"][at:]])
    more = enc.score_candidates(cache, items, offsets([EC[0] + 1, *EC[1:]]), ts, microbatch_size=2)
    keep = torch.tensor([i for i in range(len(items)) if i != at])
    torch.testing.assert_close(more[keep], base, rtol=1e-12, atol=1e-14)


def test_serving_errors_and_recommender_wrapper():
    enc = make_encoder()
    h, c = requests()
    cache = enc.prefill(h["items"], h["actions"], h["seq_offsets"], h["timestamps"])
    with pytest.raises(ValueError, match="cand_offsets must have shape \\[B\\+1\\] = \\[5\\]"):
        enc.score_candidates(cache, c["items"], offsets([15]))
    with pytest.raises(ValueError, match="microbatch_size must be a positive int"):
        enc.score_candidates(cache, c["items"], c["offsets"], microbatch_size=0)
    with pytest.raises(ValueError, match="at most max_seq_len - 1 = 7"):
        enc.prefill(torch.ones(N, dtype=torch.long), torch.full((N,), 2), offsets([N]), torch.zeros(N, dtype=torch.long))
    enc.train()
    with pytest.raises(ValueError, match="call .eval\\(\\) first"):
        enc.prefill(h["items"], h["actions"], h["seq_offsets"], h["timestamps"])

    torch.manual_seed(0)
    model = HSTURecommender(ModelConfig(num_items=NUM_ITEMS, dim=8, num_layers=2, num_heads=2, max_seq_len=N,
                                        dropout=0.0)).double().eval()
    cache = model.prefill(h["items"], h["actions"], h["seq_offsets"], h["timestamps"])
    scores = model.score_candidates(cache, c["items"], c["offsets"], c["timestamps"], microbatch_size=2)
    want = full_forward(model.encoder, h, c)
    torch.testing.assert_close(scores.outputs, want)
    torch.testing.assert_close(scores.ratings, model.predict_ratings(want))
    user = torch.repeat_interleave(cache.last_output, torch.tensor(EC), dim=0)
    torch.testing.assert_close(scores.retrieval, torch.nn.functional.cosine_similarity(
        user, model.encoder.item_table[c["items"]], dim=-1) / model.config.temperature)
    assert torch.all(scores.retrieval[5:8] == 0)  # the cold-start user's candidates
