"""``hstu.dropout``: F.dropout's meaning with a cheaper CPU mask."""

import pytest
import torch
import torch.nn.functional as F

from hstu import dropout as hd


@pytest.mark.parametrize("p", [0.2, 0.5, 0.05])
def test_drop_rate_and_scale(p):
    torch.manual_seed(0)
    x = torch.ones(1000, 1001)  # an element count no multiple of 4: the last word is cut
    y = hd.dropout(x, p, True)
    kept = y != 0
    # 1e6 draws: the rate's standard error is below 5e-4
    assert abs(kept.float().mean().item() - (1 - p)) < 3e-3
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(37, 5, requires_grad=True)
    y = hd.dropout(x, 0.3, True)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y.detach() != 0).float() / 0.7)


def test_masks_differ_per_call_and_follow_the_seed():
    torch.manual_seed(2)
    a, b = hd.keep_mask((64, 9), 0.5), hd.keep_mask((64, 9), 0.5)
    torch.manual_seed(2)
    assert torch.equal(hd.keep_mask((64, 9), 0.5), a) and not torch.equal(a, b)


def test_identity_when_not_training_or_p_zero_and_f_dropout_otherwise(monkeypatch):
    x = torch.randn(4, 3)
    assert hd.dropout(x, 0.2, False) is x and hd.dropout(x, 0.0, True) is x
    assert (hd.dropout(x, 1.0, True) == 0).all()
    module = hd.Dropout(0.25)
    assert module.eval()(x) is x
    monkeypatch.setattr(hd, "FAST_CPU", False)
    torch.manual_seed(3)
    want = F.dropout(x, 0.25, True)
    torch.manual_seed(3)
    torch.testing.assert_close(module.train()(x), want)
