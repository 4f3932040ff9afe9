"""A small run of every CUDA kernel (forward, atomic and deterministic backward, cached scoring; every bias
variant, head dims 64 and 128) for compute-sanitizer (bench/gpu_cuda_session.sh):

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python bench/cuda_sanitize_case.py
    compute-sanitizer --tool racecheck python bench/cuda_sanitize_case.py
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hstu_kernels.ops.hstu_attention import cuda_impl  # noqa: E402
from hstu_kernels.ops.hstu_cached_attention import cuda_impl as cached_cuda  # noqa: E402


def main():
    ok, why = cuda_impl.available()
    assert torch.cuda.is_available() and ok, why
    g = torch.Generator(device="cuda").manual_seed(0)
    dev = dict(device="cuda", dtype=torch.bfloat16)
    lengths, targets, N = [70, 1, 0, 130], [3, 1, 0, 20], 120
    L = sum(lengths)
    offsets = torch.tensor([0] + lengths, device="cuda").cumsum(0)
    for D in cuda_impl.cuda_ext.built_head_dims():
        for pos, time in ((False, False), (True, False), (False, True), (True, True)):
            q, k, v = (torch.randn(L, 2, D, generator=g, **dev).requires_grad_(True) for _ in range(3))
            kw = dict(num_targets=torch.tensor(targets, device="cuda"), max_attn_len=40)
            if pos:
                kw["pos_weight"] = torch.randn(2, 2 * N - 1, generator=g, **dev).requires_grad_(True)
            if time:
                kw.update(timestamps=torch.randint(0, 200, (L,), generator=g, device="cuda"),
                          time_boundaries=torch.tensor([5, 50], device="cuda"),
                          time_weight=torch.randn(1, 3, generator=g, **dev).requires_grad_(True))
            for det in (False, True):
                cuda_impl.set_deterministic(det)
                out = cuda_impl.hstu_attention_cuda(q, k, v, offsets, N, **kw)
                out.float().square().sum().backward()
            cuda_impl.set_deterministic(False)
            with torch.no_grad():
                cands, hists = [3, 70, 0], [40, 130, 9]
                C, Lh = sum(cands), sum(hists)
                ckw = {}
                if pos:
                    ckw["pos_weight"] = kw["pos_weight"].detach()
                if time:
                    ckw.update(timestamps=torch.randint(0, 200, (C,), generator=g, device="cuda"),
                               cache_timestamps=torch.randint(0, 200, (Lh,), generator=g, device="cuda"),
                               time_boundaries=kw["time_boundaries"], time_weight=kw["time_weight"].detach())
                cached_cuda.hstu_cached_attention_cuda(
                    torch.randn(C, 2, D, **dev), torch.randn(C, 2, D, **dev), torch.randn(C, 2, D, **dev),
                    torch.tensor([0] + cands, device="cuda").cumsum(0), torch.randn(Lh, 2, D, **dev),
                    torch.randn(Lh, 2, D, **dev), torch.tensor([0] + hists, device="cuda").cumsum(0), N,
                    max_attn_len=50, **ckw)
    torch.cuda.synchronize()
    print("sanitize case done")


if __name__ == "__main__":
    main()
