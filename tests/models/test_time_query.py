"""``ModelConfig.time_query = "next"``: the time bias's query time is the time of the event each token predicts."""

import numpy as np
import pytest
import torch

from hstu.data.batching import eval_batch, make_batch
from hstu.model import HSTURecommender, ModelConfig, next_event_times
from test_batching import seqs_of


def test_batches_carry_the_next_events_time():
    s = seqs_of([6, 4])  # event e of the whole table at time 10 e
    b = make_batch(s, np.array([0, 1]), np.array([1, 0]), np.array([4, 2]), np.array([6, 3]), next_labels=True)
    # history tokens: the next event's time (the last one's: its first target's); targets: their own
    assert b.next_timestamps.tolist() == [20, 30, 40, 40, 50, 70, 80, 80]
    # events 8, 9 of user 1: the last has none after it and keeps its own time
    assert make_batch(s, np.array([1]), np.array([2]), np.array([4])).next_timestamps.tolist() == [90, 90]
    # evaluation: the last history token queries at the held-out target's time
    e = eval_batch(s, np.array([0]), 8, "test")
    assert e.next_timestamps[-2].item() == e.timestamps[-1].item() == 50
    assert e.to_padded()["next_timestamps"].shape == (1, 6)


def test_next_event_times_shifts_within_segments():
    ts = torch.tensor([1, 2, 3, 10, 11, 7])
    off = torch.tensor([0, 3, 3, 5, 6])
    assert next_event_times(ts, off).tolist() == [2, 3, 3, 11, 11, 7]
    assert next_event_times(ts, off, torch.tensor([100, 200, 300, 400])).tolist() == [2, 3, 100, 11, 300, 400]
    assert next_event_times(ts[:0], torch.tensor([0, 0])).shape == (0,)


def model_pair():
    models = []
    for query in ("self", "next"):
        torch.manual_seed(0)
        m = HSTURecommender(ModelConfig(num_items=30, dim=8, max_seq_len=8, dropout=0.0, time_query=query,
                                        time_buckets="fine")).double().eval()
        with torch.no_grad():
            for block in m.encoder.blocks:
                block.bias.time_weight.normal_()
        models.append(m)
    return models


def test_next_query_time_reaches_the_encoder():
    s = seqs_of([6, 4])
    s.timestamps[:] = np.array([0, 3, 100, 2000, 90000, 10**6, 0, 50, 51, 4000])
    b = eval_batch(s, np.array([0, 1]), 8, "valid")
    own, nxt = model_pair()
    with torch.no_grad():
        want = nxt.encoder(b.items, b.actions, b.seq_offsets, b.timestamps, b.num_targets,
                           query_timestamps=b.next_timestamps)
        torch.testing.assert_close(nxt(b), want)
        assert not torch.allclose(own(b), nxt(b))


def test_prefill_uses_next_times_and_the_request_time():
    _, nxt = model_pair()
    g = torch.Generator().manual_seed(1)
    off = torch.tensor([0, 4, 4, 7])
    items = torch.randint(1, 31, (7,), generator=g)
    actions = torch.randint(2, 5, (7,), generator=g)
    ts = torch.sort(torch.randint(0, 10**5, (7,), generator=g)).values
    request = torch.tensor([10**6, 5, 2 * 10**5])
    with torch.no_grad():
        cache = nxt.prefill(items, actions, off, ts, request_times=request)
        full = nxt.encoder(items, actions, off, ts, query_timestamps=next_event_times(ts, off, request))
        default = nxt.prefill(items, actions, off, ts)
    torch.testing.assert_close(cache.last_output[[0, 2]], full[[3, 6]])
    assert not torch.allclose(default.last_output[0], cache.last_output[0])
    with pytest.raises(ValueError, match="time_query"):
        ModelConfig(num_items=3, time_query="later")
