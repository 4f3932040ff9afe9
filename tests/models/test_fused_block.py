"""``fused=True`` blocks and encoders give the results of ``fused=False`` (Triton interpreter on CPU, kernels on GPU)."""

import pytest
import torch

import hstu
from hstu.actions import NUM_ACTIONS
from hstu.jagged import lengths_to_offsets
from hstu_kernels import fast_backends_available

pytestmark = pytest.mark.skipif(
    all(fast_backends_available().values()), reason="no fused backend here (needs CUDA or TRITON_INTERPRET=1)"
)


def test_fused_encoder_matches_unfused_forward_and_gradients():
    torch.manual_seed(0)
    kw = dict(dim=32, num_layers=2, num_heads=2, max_seq_len=12, dropout=0.0)
    ref = hstu.HSTUEncoder(40, NUM_ACTIONS, **kw)
    fused = hstu.HSTUEncoder(40, NUM_ACTIONS, fused=True, **kw)
    fused.load_state_dict(ref.state_dict())
    with torch.no_grad():
        for a, b in zip(ref.blocks, fused.blocks):
            a.bias.pos_weight.normal_(0, 0.5)
            a.bias.time_weight.normal_(0, 0.5)
            b.bias.pos_weight.copy_(a.bias.pos_weight)
            b.bias.time_weight.copy_(a.bias.time_weight)
    lengths = torch.tensor([7, 0, 1, 13, 5])
    nt = torch.tensor([2, 0, 1, 3, 0])  # 13 tokens > max_seq_len = 12 thanks to 3 targets
    L = int(lengths.sum())
    args = (torch.randint(1, 41, (L,)), torch.randint(1, NUM_ACTIONS, (L,)), lengths_to_offsets(lengths),
            torch.randint(0, 10**7, (L,)), nt)
    out_ref, out_fused = ref(*args), fused(*args)
    torch.testing.assert_close(out_fused, out_ref, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(out_ref)
    out_ref.backward(grad)
    out_fused.backward(grad)
    for (name, p), q in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, msg=lambda m: f"{name}: {m}")


def _block_pair(**kw):
    torch.manual_seed(1)
    ref = hstu.HSTUBlock(16, num_heads=2, max_seq_len=10, dropout=0.0, **kw)
    fused = hstu.HSTUBlock(16, num_heads=2, max_seq_len=10, dropout=0.0, fused=True, **kw)
    with torch.no_grad():
        ref.bias.pos_weight.normal_(0, 0.5)
        ref.bias.time_weight.normal_(0, 0.5)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("window", [0, 3])
def test_fused_forward_padded_matches_unfused(window):
    ref, fused = _block_pair(max_attn_len=window)
    lengths = torch.tensor([6, 0, 1, 9])
    tok = torch.arange(9)[None, :] < lengths[:, None]
    x = torch.where(tok[..., None], torch.randn(4, 9, 16), float("nan"))  # rows past each length are ignored
    ts = torch.randint(0, 10**6, (4, 9))
    nt = torch.tensor([2, 0, 1, 0])
    out_ref = ref.forward_padded(x, lengths, ts, nt)
    out_fused = fused.forward_padded(x, lengths, ts, nt)
    torch.testing.assert_close(out_fused[tok], out_ref[tok], rtol=1e-4, atol=1e-4)
    assert (out_fused[~tok] == 0).all() and (out_ref[~tok] == 0).all()


@pytest.mark.parametrize("window", [0, 2])
def test_fused_forward_cached_matches_unfused(window):
    ref, fused = _block_pair(max_attn_len=window)
    hist, cands = torch.tensor([5, 0, 3]), torch.tensor([2, 3, 1])
    h_off, c_off = lengths_to_offsets(hist), lengths_to_offsets(cands)
    xh, xc = torch.randn(int(hist.sum()), 16), torch.randn(int(cands.sum()), 16)
    th, tc = torch.randint(0, 10**6, (int(hist.sum()),)), torch.randint(0, 10**6, (int(cands.sum()),))
    with torch.no_grad():
        _, k, v = ref.forward_kv(xh, h_off, th)
        out_ref = ref.forward_cached(xc, c_off, k, v, h_off, tc, tc, th)
        out_fused = fused.forward_cached(xc, c_off, k, v, h_off, tc, tc, th)
    torch.testing.assert_close(out_fused, out_ref, rtol=1e-4, atol=1e-4)
