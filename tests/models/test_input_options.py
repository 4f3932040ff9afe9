"""The recipe options of the input and the loss: ``input_mode``, ``position_embedding``, ``item_init_std`` and
``negatives = "position"``."""

import pytest
import torch
import torch.nn.functional as F

import hstu
from hstu.actions import NUM_ACTIONS, UNKNOWN
from hstu.config import ArgumentError
from hstu.embedding import FusedInputEmbedding
from hstu.jagged import inverse_positions, jagged_to_padded, padded_to_jagged
from hstu.model import HSTURecommender, ModelConfig, _rowwise_logits
from test_model import NUM_ITEMS, jagged_inputs

D = 8


def test_inverse_positions_count_back_from_the_last_history_event():
    off = torch.tensor([0, 4, 4, 5, 9])
    assert inverse_positions(off, 9).tolist() == [4, 3, 2, 1, 1, 4, 3, 2, 1]
    # the targets closing a segment sit after its history: position 0
    assert inverse_positions(off, 9, torch.tensor([2, 0, 1, 0])).tolist() == [2, 1, 0, 0, 0, 4, 3, 2, 1]
    assert inverse_positions(torch.tensor([0]), 0).shape == (0,)


def test_sum_input_is_the_scaled_item_plus_the_action():
    emb = FusedInputEmbedding(NUM_ITEMS, NUM_ACTIONS, D, mode="sum", init_std=0.02)
    assert emb.mlp is None and emb.position_embedding is None
    assert 0.01 < emb.item_embedding.weight[1:].std().item() < 0.03
    items, actions = torch.tensor([3, 0, 7]), torch.tensor([2, 0, UNKNOWN])
    want = emb.item_embedding.weight[items] * D**0.5 + emb.action_embedding.weight[actions]
    torch.testing.assert_close(emb(items, actions), want)
    with pytest.raises(ValueError, match="mode must be one of"):
        FusedInputEmbedding(NUM_ITEMS, NUM_ACTIONS, D, mode="concat")


def test_position_embedding_is_added_by_position_and_required():
    emb = FusedInputEmbedding(NUM_ITEMS, NUM_ACTIONS, D, max_positions=4)
    items, actions = torch.tensor([5, 5, 5]), torch.tensor([2, 2, 2])
    plain = emb.mlp(torch.cat([emb.item_embedding(items), emb.action_embedding(actions)], -1))
    got = emb(items, actions, torch.tensor([0, 2, 9]))  # past the last row: the last row
    torch.testing.assert_close(got - plain, emb.position_embedding.weight[[0, 2, 3]])
    with pytest.raises(ValueError, match="positions must have the items' shape"):
        emb(items, actions)


def encoder(**options):
    torch.manual_seed(0)
    return hstu.HSTUEncoder(NUM_ITEMS, NUM_ACTIONS, dim=D, num_layers=2, num_heads=2, max_seq_len=10, dropout=0.0,
                            **options).double()


@pytest.mark.parametrize("mode", ["mlp", "sum"])
def test_position_embedding_padded_path_matches_jagged(mode):
    enc = encoder(input_mode=mode, position_embedding=True)
    x = jagged_inputs([4, 1, 9, 0, 6])
    nt = torch.tensor([1, 0, 2, 0, 0])
    out = enc(**x, num_targets=nt)
    out.sum().backward()
    # every position a token of this batch has is trained: 1..7 for history (9 events, 2 of them targets), 0 for
    # the targets
    used = enc.embedding.position_embedding.weight.grad.abs().sum(1) > 0
    assert used[:8].all() and not used[8:].any()
    lengths = x["seq_offsets"].diff()
    pad = enc.forward_padded(*(jagged_to_padded(x[n], x["seq_offsets"], 9)[0] for n in ("items", "actions")),
                             lengths, jagged_to_padded(x["timestamps"], x["seq_offsets"], 9)[0], nt)
    torch.testing.assert_close(padded_to_jagged(pad, lengths), out)


def test_position_embedding_makes_the_output_depend_on_the_distance_from_the_end():
    enc = encoder(position_embedding=True, attn_bias="none").eval()
    items, actions = torch.tensor([3, 3]), torch.tensor([2, 2])
    one = torch.tensor([0, 1])
    with torch.no_grad():
        alone = enc(items[:1], actions[:1], one)[0]
        # the same first event, now second to last: a different position, so a different output
        first = enc(items, actions, torch.tensor([0, 2]))[0]
    assert not torch.allclose(alone, first)


def test_recommender_takes_the_input_options():
    m = HSTURecommender(ModelConfig(num_items=NUM_ITEMS, dim=D, input_mode="sum", position_embedding=True,
                                    item_init_std=0.05))
    assert m.encoder.embedding.mlp is None and m.encoder.uses_positions
    assert m.encoder.embedding.position_embedding.num_embeddings == 200
    for field, value in (("input_mode", "concat"), ("negatives", "batch"), ("item_init_std", -1.0)):
        with pytest.raises(ArgumentError, match=field):
            ModelConfig(num_items=3, **{field: value})


def test_per_position_negatives_are_one_draw_per_labelled_row():
    model = HSTURecommender(ModelConfig(num_items=3, dim=D, num_negatives=6, max_seq_len=8, negatives="position"))
    out = torch.randn(5, D)
    offsets = torch.tensor([0, 3, 5])
    next_items = torch.tensor([1, 2, 0, 3, 1])  # position 2 has no label: 4 rows
    loss = model.retrieval_loss(out, next_items, offsets, generator=torch.Generator().manual_seed(0))
    negs = torch.randint(1, 4, (4, 6), generator=torch.Generator().manual_seed(0))
    table = model.normalized_items().detach()
    want = []
    for r, (row, pos) in enumerate(((0, 1), (1, 2), (3, 3), (4, 1))):
        u = F.normalize(out[row], dim=0)
        others = [n for n in negs[r].tolist() if n != pos]  # accidental hits drop out
        logits = torch.stack([u @ table[pos]] + [u @ table[n] for n in others]) / 0.05
        want.append(torch.logsumexp(logits, 0) - logits[0])
    torch.testing.assert_close(loss.detach(), torch.stack(want).mean(), rtol=1e-5, atol=1e-5)
    given = model.retrieval_loss(out, next_items, offsets, negatives=negs)
    torch.testing.assert_close(given, loss)
    with pytest.raises(ValueError, match=r"negatives must have shape \[4, 6\]"):
        model.retrieval_loss(out, next_items, offsets, negatives=negs[:2])


@pytest.mark.parametrize("items", [50, 5000])
def test_rowwise_logits_chunks_and_paths_agree(items):
    g = torch.Generator().manual_seed(0)
    u, table = torch.randn(37, D, generator=g, dtype=torch.float64), torch.randn(items, D, generator=g, dtype=torch.float64)
    negs = torch.randint(0, items, (37, 5), generator=g)
    want = torch.einsum("rd,rkd->rk", u, table[negs])
    for budget in (1, 64, 2**22):  # one row per chunk, a few rows, everything at once
        torch.testing.assert_close(_rowwise_logits(u, table, negs, budget), want)
    assert _rowwise_logits(u[:0], table, negs[:0]).shape == (0, 5)


def test_bad_offsets_are_a_clear_error_before_the_positions_read_them():
    enc = encoder(position_embedding=True)
    x = jagged_inputs([3, 2])
    x["seq_offsets"] = torch.tensor([0, 3, 4])  # ends at 4 of 5 tokens
    with pytest.raises(ValueError, match="seq_offsets"):
        enc(**x)
    with pytest.raises(ValueError, match="seq_offsets"):
        enc.eval().prefill(x["items"], x["actions"], x["seq_offsets"], x["timestamps"])
