"""Shapes, gradients and layout agreement of the reference model's modules."""

import pytest
import torch
import torch.nn.functional as F

import hstu
from hstu.actions import NUM_ACTIONS, UNKNOWN
from hstu.bias import RelativeAttentionBias
from hstu.embedding import FusedInputEmbedding
from hstu.jagged import jagged_to_padded, lengths_to_offsets, padded_to_jagged
from hstu.model import HSTURecommender, ModelConfig
from hstu_kernels.ops.hstu_attention import fast_backends_available

NUM_ITEMS, D = 30, 16


def jagged_inputs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = sum(lengths)
    return dict(
        items=torch.randint(1, NUM_ITEMS + 1, (L,), generator=g),
        actions=torch.randint(1, NUM_ACTIONS, (L,), generator=g),
        seq_offsets=lengths_to_offsets(torch.tensor(lengths)),
        timestamps=torch.randint(0, 10**7, (L,), generator=g),
    )


def test_fused_input_embedding_shapes_and_padding():
    emb = FusedInputEmbedding(NUM_ITEMS, NUM_ACTIONS, D)
    out = emb(torch.tensor([[1, 2, 0]]), torch.tensor([[2, UNKNOWN, 0]]))
    assert out.shape == (1, 3, D)
    out.sum().backward()
    # padding rows get no gradient, so they stay zero
    assert emb.item_embedding.weight.grad[0].abs().sum() == 0
    assert emb.action_embedding.weight.grad[0].abs().sum() == 0
    with pytest.raises(ValueError, match="one shape"):
        emb(torch.tensor([1, 2]), torch.tensor([1]))


def test_relative_attention_bias_tables():
    rab = RelativeAttentionBias(10, num_heads=2)
    assert rab.pos_weight.shape == (2, 19)
    assert rab.time_weight.shape == (2, 5)  # <1h, <1d, <7d, <30d, >=30d
    assert rab.pos_weight.abs().sum() == 0 and rab.time_weight.abs().sum() == 0
    assert rab.time_boundaries.tolist() == [3600, 86400, 604800, 2592000]
    with pytest.raises(ValueError, match="sorted"):
        RelativeAttentionBias(10, time_boundaries=[10, 5])


@pytest.mark.parametrize("heads, per_head", [(1, False), (2, True), (4, False)])
def test_block_shapes_and_gradients(heads, per_head):
    block = hstu.HSTUBlock(D, num_heads=heads, max_seq_len=12, dropout=0.0, per_head_bias=per_head)
    x = torch.randn(13, D, requires_grad=True)
    offsets = torch.tensor([0, 5, 5, 6, 13])
    ts = torch.randint(0, 10**6, (13,))
    # non-zero tables so the bias gradients are exercised through a real score
    with torch.no_grad():
        block.bias.pos_weight.normal_()
        block.bias.time_weight.normal_()
    y = block(x, offsets, ts, torch.tensor([2, 0, 1, 3]))
    assert y.shape == (13, D)
    y.square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("activation", ["silu", "softmax"])
def test_block_padded_path_matches_jagged(activation):
    torch.manual_seed(0)
    block = hstu.HSTUBlock(D, num_heads=2, max_seq_len=8, dropout=0.0, attn_activation=activation, max_attn_len=3)
    with torch.no_grad():
        block.bias.pos_weight.normal_()
        block.bias.time_weight.normal_()
    lengths = torch.tensor([5, 0, 8, 2])
    targets = torch.tensor([2, 0, 1, 1])
    x = torch.randn(int(lengths.sum()), D)
    ts = torch.randint(0, 10**6, (x.shape[0],))
    offsets = lengths_to_offsets(lengths)
    jag = block(x, offsets, ts, targets)
    xp = jagged_to_padded(x, offsets, 8, pad_value=7.0)[0]  # garbage in the padding must not leak
    tp = jagged_to_padded(ts, offsets, 8, pad_value=999)[0]
    pad = block.forward_padded(xp, lengths, tp, targets)
    torch.testing.assert_close(padded_to_jagged(pad, lengths), jag, rtol=1e-5, atol=1e-5)
    assert (padded_to_jagged(pad, lengths).shape == jag.shape)
    mask = torch.arange(8)[None] < lengths[:, None]
    assert (pad[~mask] == 0).all()


def test_encoder_shapes_gradients_and_padded_agreement():
    torch.manual_seed(0)
    enc = hstu.HSTUEncoder(NUM_ITEMS, NUM_ACTIONS, dim=D, num_layers=2, num_heads=2, max_seq_len=10, dropout=0.0)
    x = jagged_inputs([4, 1, 9, 0, 6])
    nt = torch.tensor([1, 0, 2, 0, 0])
    out = enc(**x, num_targets=nt)
    assert out.shape == (20, D)
    out.sum().backward()
    assert enc.item_table.grad.abs().sum() > 0
    lengths = x["seq_offsets"].diff()
    pad = enc.forward_padded(
        *(jagged_to_padded(x[n], x["seq_offsets"], 9)[0] for n in ("items", "actions")), lengths,
        jagged_to_padded(x["timestamps"], x["seq_offsets"], 9)[0], nt,
    )
    torch.testing.assert_close(padded_to_jagged(pad, lengths), out, rtol=1e-5, atol=1e-5)


def test_encoder_checks_its_inputs():
    enc = hstu.HSTUEncoder(NUM_ITEMS, NUM_ACTIONS, dim=D, max_seq_len=4)
    x = jagged_inputs([5])
    with pytest.raises(ValueError, match="max_seq_len = 4"):
        enc(**x)
    x = jagged_inputs([3])
    x["timestamps"][1] = -5
    with pytest.raises(ValueError, match="timestamps has a negative value"):
        enc(**x)


def test_fused_flag_errors_are_clear():
    with pytest.raises(ValueError, match="silu"):
        hstu.HSTUEncoder(NUM_ITEMS, NUM_ACTIONS, attn_activation="softmax", fused=True)
    with pytest.raises(ValueError, match="silu"):
        hstu.HSTUBlock(D, attn_activation="softmax", fused=True)
    if all(fast_backends_available().values()):
        with pytest.raises(ValueError, match="no fused backend is available"):
            hstu.HSTUBlock(D, fused=True)


def test_block_rejects_bad_configuration():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        hstu.HSTUBlock(10, num_heads=3)
    with pytest.raises(ValueError, match="attn_activation"):
        hstu.HSTUBlock(D, attn_activation="relu")


def test_retrieval_loss_is_sampled_softmax_without_accidental_hits():
    model = HSTURecommender(ModelConfig(num_items=3, dim=D, num_negatives=8, max_seq_len=8))
    out = torch.randn(5, D)
    offsets = torch.tensor([0, 3, 5])
    next_items = torch.tensor([1, 2, 0, 3, 1])  # position 2 has no label
    loss = model.retrieval_loss(out, next_items, offsets, generator=torch.Generator().manual_seed(0))
    negs = torch.randint(1, 4, (2, 8), generator=torch.Generator().manual_seed(0))  # one set per sequence
    table = model.normalized_items().detach()
    want = []
    for row, seq, pos in ((0, 0, 1), (1, 0, 2), (3, 1, 3), (4, 1, 1)):
        u = torch.nn.functional.normalize(out[row], dim=0)
        others = [n for n in negs[seq].tolist() if n != pos]  # with 3 items, hits are certain: they must drop out
        logits = torch.stack([u @ table[pos]] + [u @ table[n] for n in others]) / 0.05
        want.append(torch.logsumexp(logits, 0) - logits[0])
    torch.testing.assert_close(loss.detach(), torch.stack(want).mean(), rtol=1e-5, atol=1e-5)
    assert model.retrieval_loss(out, torch.zeros(5, dtype=torch.long), offsets).item() == 0.0


def _reference_retrieval_loss(out, table, next_items, offsets, negs, per_position, temperature):
    """The loss row by row in float64: each labelled row against its negatives that are not its positive."""
    losses, r = [], 0
    for b in range(offsets.shape[0] - 1):
        for row in range(int(offsets[b]), int(offsets[b + 1])):
            pos = int(next_items[row])
            if pos == 0:
                continue
            u = F.normalize(out[row].double(), dim=0)
            t = F.normalize(table.double(), dim=1)
            cands = [n for n in (negs[r] if per_position else negs[b]).tolist() if n != pos]
            logits = torch.cat([(u @ t[pos])[None], t[cands] @ u]) / temperature
            losses.append(torch.logsumexp(logits, 0) - logits[0])
            r += 1
    return torch.stack(losses).mean()


@pytest.mark.parametrize("negatives", ["sequence", "position"])
@pytest.mark.parametrize("num_items", [1, 4, 300])  # every negative a hit, most rows with hits, few hits
def test_retrieval_loss_and_gradients_match_a_row_by_row_reference(negatives, num_items):
    g = torch.Generator().manual_seed(num_items)
    model = HSTURecommender(ModelConfig(num_items=num_items, dim=D, num_negatives=7, max_seq_len=40,
                                        negatives=negatives))
    # empty, single-token, odd and unlabelled sequences; labels stop short of some sequences' ends
    lengths = torch.tensor([0, 1, 13, 5, 0, 9, 2])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    L = int(offsets[-1])
    next_items = torch.randint(1, num_items + 1, (L,), generator=g)
    next_items[offsets[3]:offsets[4]] = 0  # a sequence without labels
    next_items[offsets[3] - 4:offsets[3]] = 0
    next_items[torch.rand(L, generator=g) < 0.2] = 0
    rows = int((next_items > 0).sum())
    negs = torch.randint(1, num_items + 1, ((rows if negatives == "position" else 7), 7), generator=g)
    out = torch.randn(L, D, generator=g, requires_grad=True)
    loss = model.retrieval_loss(out, next_items, offsets, negatives=negs)
    want = _reference_retrieval_loss(out, model.encoder.item_table, next_items, offsets, negs,
                                     negatives == "position", model.config.temperature)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(loss, (out, model.encoder.item_table))
    ref = torch.autograd.grad(want, (out, model.encoder.item_table))
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    summed = model.retrieval_loss(out, next_items, offsets, negatives=negs, reduction="sum")
    torch.testing.assert_close(summed, loss * rows)


def test_rating_head_starts_near_typical_rating():
    model = HSTURecommender(ModelConfig(num_items=5, dim=D))
    pred = model.predict_ratings(torch.zeros(3, D))
    assert pred.shape == (3,)
    torch.testing.assert_close(pred, torch.full((3,), 3.5), rtol=0, atol=0.5)


def test_input_norm_and_fine_time_buckets_reach_every_block():
    from hstu.bias import FINE_TIME_BOUNDARIES
    from hstu.config import ArgumentError

    model = HSTURecommender(ModelConfig(num_items=NUM_ITEMS, dim=D, input_norm=True, time_buckets="fine"))
    for block in model.encoder.blocks:
        assert isinstance(block.input_norm, torch.nn.LayerNorm)
        assert block.bias.time_boundaries.tolist() == list(FINE_TIME_BOUNDARIES)
        assert block.bias.time_weight.shape == (1, len(FINE_TIME_BOUNDARIES) + 1)
    plain = HSTURecommender(ModelConfig(num_items=NUM_ITEMS, dim=D))
    assert all(b.input_norm is None for b in plain.encoder.blocks)
    # the norm sits on the projection's input: scaling a block's input leaves u, v, q, k unchanged
    block = model.encoder.blocks[0]
    x = torch.randn(5, D)
    for a, b in zip(block.project(x), block.project(3 * x + 0.0)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ArgumentError, match="time_buckets"):
        ModelConfig(num_items=3, time_buckets="weekly")


@pytest.mark.parametrize("attn_bias", ["both", "position", "time", "none"])
def test_attn_bias_ablation_trains_only_the_tables_it_uses(attn_bias):
    torch.manual_seed(0)
    model = HSTURecommender(ModelConfig(num_items=NUM_ITEMS, dim=D, max_seq_len=12, dropout=0.0, attn_bias=attn_bias))
    for block in model.encoder.blocks:
        with torch.no_grad():
            block.bias.pos_weight.normal_()
            block.bias.time_weight.normal_()
    x = jagged_inputs([5, 0, 7])
    out = model.encoder(x["items"], x["actions"], x["seq_offsets"], x["timestamps"])
    out.square().sum().backward()
    bias = model.encoder.blocks[0].bias
    assert (bias.pos_weight.grad is not None) == (attn_bias in ("both", "position"))
    assert (bias.time_weight.grad is not None) == (attn_bias in ("both", "time"))
    # the plan and the op agree for every choice
    monkey = hstu.encoder.HSTUEncoder.use_plan
    try:
        hstu.encoder.HSTUEncoder.use_plan = False
        ref = model.encoder(x["items"], x["actions"], x["seq_offsets"], x["timestamps"])
    finally:
        hstu.encoder.HSTUEncoder.use_plan = monkey
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="attn_bias"):
        hstu.HSTUBlock(D, attn_bias="rope")


def test_no_actions_ablation_ignores_the_actions():
    torch.manual_seed(0)
    x = jagged_inputs([4, 6])
    other = torch.randint(1, NUM_ACTIONS, x["actions"].shape)
    for use_actions in (True, False):
        model = HSTURecommender(ModelConfig(num_items=NUM_ITEMS, dim=D, max_seq_len=12, dropout=0.0,
                                            use_actions=use_actions))
        a = model.encoder(x["items"], x["actions"], x["seq_offsets"], x["timestamps"])
        b = model.encoder(x["items"], other, x["seq_offsets"], x["timestamps"])
        assert torch.allclose(a, b) == (not use_actions)
