"""``hstu.products_lse.products_logsumexp``: the retrieval loss's logsumexp of bounded products."""

import pytest
import torch
import torch.nn.functional as F

from hstu.products_lse import MAX_SPAN, products_logsumexp


def unit_inputs(B, T, K, D, temperature, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(B, T, D, generator=g, dtype=dtype), dim=-1) / temperature
    items = F.normalize(torch.randn(B, K, D, generator=g, dtype=dtype), dim=-1)
    return u.requires_grad_(), items.requires_grad_()


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1 / 40, 0.01])
@pytest.mark.parametrize("shape", [(3, 7, 5, 4), (1, 1, 1, 8), (2, 0, 3, 4)])
def test_matches_torch_logsumexp_and_its_gradients(shape, temperature):
    # 0.01 is past MAX_SPAN: the bounded shift would underflow, and the function falls back to torch's
    u, items = unit_inputs(*shape, temperature, torch.float64, seed=shape[0])
    got = products_logsumexp(u, items, bound=1 / temperature)
    want = torch.logsumexp(torch.bmm(u, items.transpose(1, 2)), dim=-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if got.numel() == 0:
        return
    grad = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, (u, items), grad), torch.autograd.grad(want, (u, items), grad)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_float32_at_the_bound_stays_finite_and_accurate():
    # every score at -bound (the smallest exp) and at +bound (the largest): no underflow to log(0), no overflow
    temperature = 2 / MAX_SPAN
    u = torch.zeros(1, 2, 4)
    u[0, 0, 0], u[0, 1, 0] = -1 / temperature, 1 / temperature
    items = torch.zeros(1, 6, 4)
    items[0, :, 0] = 1.0
    got = products_logsumexp(u, items, bound=1 / temperature)
    want = torch.logsumexp(torch.bmm(u.double(), items.double().transpose(1, 2)), dim=-1).float()
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)


def test_without_a_bound_it_is_torch_logsumexp():
    u, items = unit_inputs(2, 3, 4, 5, 0.001, torch.float32, seed=3)
    torch.testing.assert_close(products_logsumexp(u, items), torch.logsumexp(torch.bmm(u, items.transpose(1, 2)), -1))
