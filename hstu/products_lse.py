"""``logsumexp`` of batched products with a known bound on the scores, with a hand-written backward.

The retrieval loss scores ``[B, T, D]`` user vectors against ``[B, K, D]`` negatives per sequence and needs only
each row's ``logsumexp`` over the K scores. ``torch.logsumexp`` and its backward make about ten passes over the
``[B, T, K]`` scores (max, shift, exp, sum, log, then the shifted exp again for the gradient); when every score
is known to lie in ``[-bound, bound]`` (cosines over a temperature) the shift can be the constant ``bound``, and
``exp(s - bound)`` is kept from the forward, so the forward is one product, one exp and one sum, and the backward
one scaling and two products.
"""

from typing import Optional

import torch

# exp(s - bound) for s in [-bound, bound] stays a normal float32 down to 2 * bound = 80 (e^-80 ~ 1.8e-35)
MAX_SPAN = 80.0
# False: always torch.logsumexp of the products (bench/bench_train.py's "before")
FAST = True


class _ProductsLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, items, bound):
        shift = u.new_full((1, 1, 1), -bound)
        e = torch.baddbmm(shift, u, items.transpose(1, 2)).exp_()  # [B, T, K]
        total = e.sum(-1)
        ctx.save_for_backward(u, items, e, total)
        return total.log().add_(bound)

    @staticmethod
    def backward(ctx, grad):
        u, items, e, total = ctx.saved_tensors
        p = e * (grad / total)[..., None]  # softmax(s) * grad
        return torch.bmm(p, items), torch.bmm(p.transpose(1, 2), u), None


def products_logsumexp(u: torch.Tensor, items: torch.Tensor, bound: Optional[float] = None) -> torch.Tensor:
    """``logsumexp_k (u[b, t] . items[b, k])``: ``u [B, T, D]``, ``items [B, K, D]`` (float32/64) -> ``[B, T]``.

    ``bound``: a bound on ``|u[b, t] . items[b, k]|`` (e.g. ``1 / temperature`` for unit vectors over a
    temperature), which makes it the fast path when ``2 * bound <= MAX_SPAN``; None or larger: ``torch.logsumexp``
    of the products. A bound that does not hold gives wrong values (overflow to inf), so pass only a proven one.
    """
    if not FAST or bound is None or not 0 < 2 * bound <= MAX_SPAN or items.shape[1] == 0:
        return torch.logsumexp(torch.bmm(u, items.transpose(1, 2)), dim=-1)
    return _ProductsLogSumExp.apply(u, items, float(bound))
