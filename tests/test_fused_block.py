"""``fused=True`` blocks and encoders give the results of ``fused=False`` (Triton interpreter on CPU, kernels on GPU)."""

import pytest
import torch

import hstu
from hstu.actions import NUM_ACTIONS
from hstu.jagged import lengths_to_offsets
from hstu_kernels.ops.hstu_attention import fast_backends_available

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
