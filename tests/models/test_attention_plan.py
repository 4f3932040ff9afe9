"""The encoder's shared attention plan has the meaning of the op it replaces (``backend="torch"``)."""

import pytest
import torch

from hstu import attention_plan
from hstu.attention_plan import AttentionPlan, row_blocks
from hstu.encoder import HSTUEncoder
from hstu.jagged import lengths_to_offsets
from hstu_kernels import hstu_attention

MAX_SEQ_LEN = 12
BOUNDARIES = torch.tensor([30, 600, 86400, 10**7])


def op_and_plan(lengths, targets, max_attn_len, with_pos, with_time, seed, dtype=torch.float64, span=10**6,
                with_query=False, return_plan=False, block_rows=None, times="sorted"):
    g = torch.Generator().manual_seed(seed)
    offsets = lengths_to_offsets(torch.tensor(lengths))
    L, H, d = sum(lengths), 2, 4
    q, k, v = (torch.randn(L, H, d, generator=g, dtype=dtype).requires_grad_() for _ in range(3))
    pos = torch.randn(1, 2 * MAX_SEQ_LEN - 1, generator=g, dtype=dtype).requires_grad_() if with_pos else None
    tw = torch.randn(1, len(BOUNDARIES) + 1, generator=g, dtype=dtype).requires_grad_() if with_time else None
    ts = torch.sort(torch.randint(0, span, (L,), generator=g)).values if with_time else None
    if with_time and times == "shuffled":
        ts = ts[torch.randperm(L, generator=g)]
    qts = ts + torch.randint(0, 3 * span, (L,), generator=g) if with_time and with_query else None
    if with_time and times == "early_queries":  # some queries before their own event
        qts = (ts + torch.randint(-span, span, (L,), generator=g)).clamp(min=0)
    nt = torch.tensor(targets) if targets is not None else None
    kw = dict(alpha=0.7, pos_weight=pos, time_weight=tw)
    ref = hstu_attention(q, k, v, offsets, MAX_SEQ_LEN, timestamps=ts, query_timestamps=qts,
                         time_boundaries=BOUNDARIES if with_time else None,
                         num_targets=nt, max_attn_len=max_attn_len, backend="torch", **kw)
    plan = AttentionPlan.build(offsets, MAX_SEQ_LEN, max(lengths, default=0), timestamps=ts, query_timestamps=qts,
                               time_boundaries=BOUNDARIES if with_time else None, num_targets=nt,
                               max_attn_len=max_attn_len, with_pos=with_pos, with_time=with_time,
                               block_rows=block_rows)
    out = plan.attention(q, k, v, **kw)
    leaves = [t for t in (q, k, v, pos, tw) if t is not None]
    if return_plan:
        return ref, out, leaves, plan, kw
    return ref, out, leaves


CASES = [
    # lengths, targets, window, position bias, time bias
    ([5, 0, 12, 1, 7], [2, 0, 3, 1, 0], 0, True, True),
    ([5, 0, 12, 1, 7], None, 3, True, True),
    ([3, 9, 1], [0, 2, 1], 2, False, True),
    ([3, 9, 1], None, 0, True, False),
    ([4, 11], [1, 4], 0, False, False),
    ([1], None, 0, True, True),
    ([0, 0], None, 0, True, True),
]


# block_rows 1 and 5: several blocks of query rows, the last one short (12 = 2 * 5 + 2)
@pytest.mark.parametrize("block_rows", [None, 1, 5])
@pytest.mark.parametrize("with_query", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_plan_matches_op_outputs_and_gradients(case, with_query, block_rows):
    lengths, targets, window, with_pos, with_time = CASES[case]
    ref, out, leaves = op_and_plan(lengths, targets, window, with_pos, with_time, seed=case, with_query=with_query,
                                   block_rows=block_rows)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    if ref.numel() == 0:
        return
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, leaves, grad)
    got = torch.autograd.grad(out, leaves, grad)
    for name, w, g in zip("q k v pos time".split(), want, got):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("times", ["shuffled", "early_queries"])
@pytest.mark.parametrize("case", [0, 1, 2])
def test_plan_times_out_of_order_take_the_general_buckets(case, times):
    # the bucket count by search needs keys in time order and queries at or after their event; anything else
    # takes bucketize, with the same meaning
    lengths, targets, window, with_pos, with_time = CASES[case]
    ref, out, leaves, plan, _ = op_and_plan(lengths, targets, window, with_pos, with_time, seed=case,
                                            with_query=True, return_plan=True, block_rows=4, times=times)
    assert not plan.times_in_order
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    grad = torch.randn_like(ref)
    for w, g in zip(torch.autograd.grad(ref, leaves, grad), torch.autograd.grad(out, leaves, grad)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_plan_sorted_times_count_buckets():
    _, _, _, plan, _ = op_and_plan(*CASES[0], seed=0, with_query=True, return_plan=True)
    assert plan.times_in_order


def test_plan_int32_timestamps_and_large_spans_agree():
    # spans past 2**30 s keep int64; both paths are the op's meaning
    for span in (10**6, 2**40):
        ref, out, _ = op_and_plan([6, 9], None, 0, True, True, seed=3, span=span, with_query=True)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_plan_rejects_tables_it_was_not_built_for():
    offsets = lengths_to_offsets(torch.tensor([3]))
    plan = AttentionPlan.build(offsets, MAX_SEQ_LEN, 3, with_pos=True, with_time=False)
    q = torch.randn(3, 1, 4)
    with pytest.raises(ValueError, match="bias tables"):
        plan.attention(q, q, q, pos_weight=torch.zeros(1, 23), time_weight=torch.zeros(1, 5))


@pytest.mark.parametrize("block_rows", [None, 5])
@pytest.mark.parametrize("max_attn_len", [0, 4])
def test_encoder_with_and_without_plan_agree(monkeypatch, max_attn_len, block_rows):
    monkeypatch.setattr(attention_plan, "DEFAULT_BLOCK_ROWS", block_rows)
    torch.manual_seed(0)
    enc = HSTUEncoder(40, 4, dim=16, num_layers=2, num_heads=2, max_seq_len=MAX_SEQ_LEN, dropout=0.0,
                      max_attn_len=max_attn_len, per_head_bias=True)
    for block in enc.blocks:
        with torch.no_grad():
            block.bias.pos_weight.normal_()
            block.bias.time_weight.normal_()
    lengths = [7, 0, 12, 1]
    L = sum(lengths)
    items = torch.randint(1, 41, (L,))
    actions = torch.randint(1, 4, (L,))
    ts = torch.sort(torch.randint(0, 10**7, (L,))).values
    offsets = lengths_to_offsets(torch.tensor(lengths))
    targets = torch.tensor([1, 0, 2, 0])
    outs = []
    for use_plan in (True, False):
        monkeypatch.setattr(HSTUEncoder, "use_plan", use_plan)
        enc.zero_grad()
        y = enc(items, actions, offsets, ts, targets)
        y.square().sum().backward()
        outs.append((y.detach(), [p.grad.clone() for p in enc.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    assert len(outs[0][1]) == len(outs[1][1])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_plan_attention_rows_equals_full_attention_rows(case):
    # the rows the encoder's last block reports (last history token, first target) plus repeats and any order
    lengths, targets, window, with_pos, with_time = CASES[case]
    ref, _, leaves, plan, kw = op_and_plan(lengths, targets, window, with_pos, with_time, seed=case,
                                           with_query=True, return_plan=True)
    if ref.shape[0] == 0:
        q = leaves[0]
        assert plan.attention_rows(q[:0], q, q, torch.zeros(0, dtype=torch.long), **kw).shape == (0, 2, 4)
        return
    g = torch.Generator().manual_seed(100 + case)
    rows = torch.cat([torch.randint(0, ref.shape[0], (7,), generator=g), torch.tensor([ref.shape[0] - 1, 0, 0])])
    q, k, v = leaves[:3]
    out = plan.attention_rows(q[rows], k, v, rows, **kw)
    torch.testing.assert_close(out, ref[rows], rtol=1e-10, atol=1e-12)
    grad = torch.randn_like(out)
    want = torch.autograd.grad(ref[rows], leaves, grad, allow_unused=True)
    got = torch.autograd.grad(out, leaves, grad, allow_unused=True)
    for name, w, gg in zip("q k v pos time".split(), want, got):
        torch.testing.assert_close(gg, w, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")


def random_batch_encoder(lengths):
    """A float64 2-layer encoder with random bias tables and a random jagged batch of ``lengths``:
    ``(enc, items, actions, offsets, timestamps)``."""
    enc = HSTUEncoder(40, 4, dim=16, num_layers=2, num_heads=2, max_seq_len=MAX_SEQ_LEN, dropout=0.0,
                      per_head_bias=True).double()
    for block in enc.blocks:
        with torch.no_grad():
            block.bias.pos_weight.normal_()
            block.bias.time_weight.normal_()
    L = sum(lengths)
    items, actions = torch.randint(1, 41, (L,)), torch.randint(1, 4, (L,))
    ts = torch.sort(torch.randint(0, 10**7, (L,))).values
    return enc, items, actions, lengths_to_offsets(torch.tensor(lengths)), ts


@pytest.mark.parametrize("use_plan", [True, False])
def test_encoder_output_rows_equal_the_full_outputs_rows(monkeypatch, use_plan):
    monkeypatch.setattr(HSTUEncoder, "use_plan", use_plan)
    torch.manual_seed(1)
    enc, items, actions, offsets, ts = random_batch_encoder([7, 0, 12, 1, 5])
    L = items.shape[0]
    targets = torch.tensor([1, 0, 2, 1, 0])
    rows = torch.tensor([5, 6, 18, 19, 0, 24, 20, 6])
    full = enc(items, actions, offsets, ts, targets)
    part = enc(items, actions, offsets, ts, targets, output_rows=rows)
    torch.testing.assert_close(part, full[rows], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="output_rows must lie in"):
        enc(items, actions, offsets, ts, targets, output_rows=torch.tensor([L]))


@pytest.mark.parametrize("use_plan,block_rows", [(True, None), (True, 4), (False, None)])
def test_encoder_dense_segments_and_rows_match_the_full_forward(monkeypatch, use_plan, block_rows):
    # the training step's layout: retrieval segments first (every row), then rating segments (targets only)
    monkeypatch.setattr(HSTUEncoder, "use_plan", use_plan)
    monkeypatch.setattr(attention_plan, "DEFAULT_BLOCK_ROWS", block_rows)
    torch.manual_seed(2)
    enc, items, actions, offsets, ts = random_batch_encoder([7, 1, 12, 4, 0, 9])
    L = items.shape[0]
    targets = torch.tensor([0, 0, 0, 1, 0, 2])
    dense, rows = 3, torch.tensor([23, 31, 32])  # the target of segment 3 and both of segment 5

    def run(**kw):
        enc.zero_grad()
        y = enc(items, actions, offsets, ts, targets, **kw)
        keep = torch.cat([torch.arange(20), rows])
        (y[keep] * torch.linspace(-1, 1, 16, dtype=y.dtype)).sum().backward()
        return y.detach(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}

    full, want = run()
    part, got = run(output_rows=rows, dense_segments=dense)
    keep = torch.zeros(L, dtype=torch.bool)
    keep[:20] = True
    keep[rows] = True
    torch.testing.assert_close(part[keep], full[keep], rtol=1e-10, atol=1e-12)
    assert (part[~keep] == 0).all()
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-11, msg=name)
    with pytest.raises(ValueError, match="past the dense segments"):
        enc(items, actions, offsets, ts, targets, output_rows=torch.tensor([5]), dense_segments=dense)
    with pytest.raises(ValueError, match="needs output_rows"):
        enc(items, actions, offsets, ts, targets, dense_segments=dense)


def test_group_slots_lay_rows_out_per_group_in_order():
    from hstu.jagged import group_slots

    groups = torch.tensor([2, 0, 2, 2, 0, 3])
    at, width = group_slots(groups, 4)
    assert width == 3
    assert at.tolist() == [6, 0, 7, 8, 1, 9]  # group 2's rows at 2 * 3 + 0, 1, 2 in their order
    assert group_slots(torch.zeros(0, dtype=torch.long), 4)[1] == 0


def test_row_blocks_tile_the_rows():
    for n in (0, 1, 7, 16, 17, 200, 203):
        for rows in (None, 1, 5, 64):
            blocks = row_blocks(n, rows)
            assert [r for r0, r1 in blocks for r in range(r0, r1)] == list(range(n))
    assert len(row_blocks(200)) == 4 and len(row_blocks(12)) == 1
    with pytest.raises(ValueError, match="block_rows"):
        row_blocks(10, 0)


def test_plan_float32_mask_entry_matches_the_op():
    # float32 (the training dtype): the masked pairs read the table's last entry, -1e30, where SiLU and its
    # derivative must be exactly 0 even next to large scores; outputs and every gradient match the op's
    g = torch.Generator().manual_seed(7)
    lengths, targets = [6, 9, 1], torch.tensor([2, 0, 0])
    offsets = lengths_to_offsets(torch.tensor(lengths))
    plan = AttentionPlan.build(offsets, MAX_SEQ_LEN, 9, num_targets=targets, with_time=False, block_rows=4)
    q, k, v = (30 * torch.randn(16, 1, 4, generator=g) for _ in range(3))
    pos = torch.randn(1, 2 * MAX_SEQ_LEN - 1, generator=g)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, pos)]
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v, pos)]
    out = plan.attention(*leaves[:3], pos_weight=leaves[3])
    ref = hstu_attention(*ref_leaves[:3], offsets, MAX_SEQ_LEN, num_targets=targets, pos_weight=ref_leaves[3],
                         backend="torch")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    grad = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(ref, ref_leaves, grad)
    for name, a, b in zip("q k v pos".split(), got, want):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("block_rows", [None, 3])
def test_plan_head_segments_sort_each_group_and_head_is_the_first_group(block_rows):
    # the padded layout holds the first head_segments segments longest first, then the others: the outputs are
    # the op's whatever the order, and head() attends the first group alone
    lengths, targets = [5, 0, 12, 1, 7, 9], [2, 0, 3, 1, 0, 4]
    g = torch.Generator().manual_seed(11)
    offsets = lengths_to_offsets(torch.tensor(lengths))
    L = sum(lengths)
    q, k, v = (torch.randn(L, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ts = torch.sort(torch.randint(0, 10**6, (L,), generator=g)).values
    pos = torch.randn(1, 2 * MAX_SEQ_LEN - 1, generator=g, dtype=torch.float64)
    tw = torch.randn(1, len(BOUNDARIES) + 1, generator=g, dtype=torch.float64)
    nt = torch.tensor(targets)
    kw = dict(pos_weight=pos, time_weight=tw)
    plan = AttentionPlan.build(offsets, MAX_SEQ_LEN, 12, timestamps=ts, time_boundaries=BOUNDARIES, num_targets=nt,
                               head_segments=3, block_rows=block_rows)
    ref = hstu_attention(q, k, v, offsets, MAX_SEQ_LEN, timestamps=ts, time_boundaries=BOUNDARIES, num_targets=nt,
                         backend="torch", **kw)
    torch.testing.assert_close(plan.attention(q, k, v, **kw), ref, rtol=1e-10, atol=1e-12)
    n = sum(lengths[:3])
    head = plan.head(3, n)
    torch.testing.assert_close(head.attention(q[:n], k[:n], v[:n], **kw), ref[:n], rtol=1e-10, atol=1e-12)
    assert plan.head(6, L) is plan
    with pytest.raises(ValueError, match="head_segments=3"):
        plan.head(2, 5)
    with pytest.raises(ValueError, match="head_segments must lie"):
        AttentionPlan.build(offsets, MAX_SEQ_LEN, 12, head_segments=7)


@pytest.mark.parametrize("case", [0, 1, 2])
def test_plan_without_autograd_matches_with_it(case):
    # evaluation: no graph, SiLU in place; the same outputs (all rows and single rows) as the autograd path
    lengths, targets, window, with_pos, with_time = CASES[case]
    ref, out, leaves, plan, kw = op_and_plan(lengths, targets, window, with_pos, with_time, seed=case,
                                             with_query=True, return_plan=True, block_rows=4)
    q, k, v = leaves[:3]
    rows = torch.tensor([0, ref.shape[0] - 1, 3])
    with torch.no_grad():
        torch.testing.assert_close(plan.attention(q, k, v, **kw), ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(plan.attention_rows(q[rows], k, v, rows, **kw), ref[rows], rtol=1e-10, atol=1e-12)


def test_plan_int32_offsets_mixed_head_tables_and_a_retained_graph():
    # int32 offsets (the op takes them), a shared position table beside a per-head time table, and two
    # backward passes through one retained graph: all as the op
    g = torch.Generator().manual_seed(5)
    lengths = [4, 0, 9, 1]
    offsets = lengths_to_offsets(torch.tensor(lengths)).to(torch.int32)
    L, H = sum(lengths), 2
    q, k, v = (torch.randn(L, H, 4, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    ts = torch.sort(torch.randint(0, 10**6, (L,), generator=g)).values
    pos = torch.randn(1, 2 * MAX_SEQ_LEN - 1, generator=g, dtype=torch.float64).requires_grad_()
    tw = torch.randn(H, len(BOUNDARIES) + 1, generator=g, dtype=torch.float64).requires_grad_()
    kw = dict(pos_weight=pos, time_weight=tw)
    ref = hstu_attention(q, k, v, offsets, MAX_SEQ_LEN, timestamps=ts, time_boundaries=BOUNDARIES,
                         backend="torch", **kw)
    plan = AttentionPlan.build(offsets, MAX_SEQ_LEN, 9, timestamps=ts, time_boundaries=BOUNDARIES, block_rows=4)
    out = plan.attention(q, k, v, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    leaves = (q, k, v, pos, tw)
    want = torch.autograd.grad(ref.sum(), leaves)
    first = torch.autograd.grad(out.sum(), leaves, retain_graph=True)
    second = torch.autograd.grad(out.sum(), leaves)
    for w, a, b in zip(want, first, second):
        torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(b, a, rtol=0, atol=0)
