"""Benchmark of the CUDA backend against its targets (H200, bf16, position + time bias on):

- attention: forward >= 600 and forward+backward >= 500 TFLOP/s at (B, N, H, D) = (16, 4096, 4, 128); no slower
  than Triton at (128, 200, 1, 64). FLOPs as in bench_attention.py: causal forward 2 * H * D * sum(n^2) (the two
  GEMMs over the valid half), backward 2.5x, forward+backward 3.5x.
- cached scoring: 1024 candidates per user over 4096-token histories within 1.5x of the time to read the users'
  K/V cache once at the device's memory bandwidth (``--bandwidth``, default 4.8 TB/s: H200 HBM3e).

Calls the backends' functions directly (``cuda_impl`` / ``triton_impl``), so it runs before the backend registry
wires ``backend="cuda"``. Median of ``triton.testing.do_bench`` when Triton is installed, else CUDA events.
Results: ``bench/results/cuda_<device>.json`` and a table on stdout.

    python bench/bench_cuda.py                 # the targets' shapes
    python bench/bench_cuda.py --quick         # small shapes: a smoke run
"""

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hstu_kernels.ops.hstu_attention import cuda_impl  # noqa: E402
from hstu_kernels.ops.hstu_cached_attention import cuda_impl as cached_cuda  # noqa: E402

BOUNDARIES = (3600, 86400, 604800, 2592000)


def bench(fn, quick):
    try:
        from triton.testing import do_bench

        return do_bench(fn, warmup=5 if quick else 25, rep=20 if quick else 100, return_mode="median")
    except ImportError:
        times = []
        for _ in range(3 if quick else 20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]


def attention_batch(B, N, H, D, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    L = B * N
    dev = dict(device="cuda", dtype=torch.bfloat16)
    return dict(
        q=torch.randn(L, H, D, generator=g, **dev), k=torch.randn(L, H, D, generator=g, **dev),
        v=torch.randn(L, H, D, generator=g, **dev),
        seq_offsets=torch.arange(0, L + 1, N, device="cuda"), max_seq_len=N,
        pos_weight=0.1 * torch.randn(H, 2 * N - 1, generator=g, **dev),
        timestamps=1_700_000_000 + torch.randint(0, 10_000_000, (L,), generator=g, device="cuda"),
        time_boundaries=torch.tensor(BOUNDARIES, device="cuda"),
        time_weight=0.1 * torch.randn(H, len(BOUNDARIES) + 1, generator=g, **dev),
    )


def _with_family(fn, flag):
    """``fn`` with the forward's kernel family pinned (``HSTU_CUDA_SM90``, read by the extension per call)."""
    def run(**kw):
        old = os.environ.get("HSTU_CUDA_SM90")
        os.environ["HSTU_CUDA_SM90"] = flag
        try:
            return fn(**kw)
        finally:
            if old is None:
                os.environ.pop("HSTU_CUDA_SM90")
            else:
                os.environ["HSTU_CUDA_SM90"] = old
    return run


def attention_rows(shapes, quick):
    from hstu_kernels.ops.common import cuda_ext

    providers = {"cuda": cuda_impl.hstu_attention_cuda}
    sm90_allowed = os.environ.get("HSTU_CUDA_SM90") != "0"  # 0: the runbook's sm90 smoke run failed
    if sm90_allowed and "sm90" in cuda_ext.kernel_families() and torch.cuda.get_device_capability() == (9, 0):
        # "cuda": the sm90 forward (wgmma / TMA); "cuda-sm80": the mma.sync forward; the backward is sm80 in both
        providers = {"cuda": _with_family(cuda_impl.hstu_attention_cuda, "1"),
                     "cuda-sm80": _with_family(cuda_impl.hstu_attention_cuda, "0")}
    try:
        from hstu_kernels.ops.hstu_attention import triton_impl

        providers["triton"] = triton_impl.hstu_attention_triton
    except ImportError:
        pass
    rows = []
    for B, N, H, D in shapes:
        batch = attention_batch(B, N, H, D)
        flops = 2 * H * D * B * N * N
        leaves = {n: batch[n].requires_grad_(True) for n in ("q", "k", "v", "pos_weight", "time_weight")}
        g = torch.randn_like(batch["q"])
        for name, fn in providers.items():
            def fwd():
                return fn(**batch, max_len=N)

            def fwd_bwd():
                for x in leaves.values():
                    x.grad = None
                fwd().backward(g)

            with torch.no_grad():
                ms_f = bench(fwd, quick)
            ms_fb = bench(fwd_bwd, quick)
            rows.append(dict(kind="attention", provider=name, shape=[B, N, H, D], fwd_ms=ms_f, fwd_bwd_ms=ms_fb,
                             fwd_tflops=flops / ms_f / 1e9, fwd_bwd_tflops=3.5 * flops / ms_fb / 1e9))
    return rows


def cached_rows(users, cands, hist, H, D, bandwidth, quick):
    g = torch.Generator(device="cuda").manual_seed(1)
    dev = dict(device="cuda", dtype=torch.bfloat16)
    C, Lh, N = users * cands, users * hist, hist + 1
    args = (torch.randn(C, H, D, generator=g, **dev), torch.randn(C, H, D, generator=g, **dev),
            torch.randn(C, H, D, generator=g, **dev), torch.arange(0, C + 1, cands, device="cuda"),
            torch.randn(Lh, H, D, generator=g, **dev), torch.randn(Lh, H, D, generator=g, **dev),
            torch.arange(0, Lh + 1, hist, device="cuda"), N)
    kw = dict(pos_weight=0.1 * torch.randn(H, 2 * N - 1, generator=g, **dev),
              timestamps=torch.randint(0, 10**7, (C,), generator=g, device="cuda"),
              cache_timestamps=torch.randint(0, 10**7, (Lh,), generator=g, device="cuda"),
              time_boundaries=torch.tensor(BOUNDARIES, device="cuda"),
              time_weight=0.1 * torch.randn(H, len(BOUNDARIES) + 1, generator=g, **dev), max_cands=cands)
    with torch.no_grad():
        ms = bench(lambda: cached_cuda.hstu_cached_attention_cuda(*args, **kw), quick)
    kv_bytes = 2 * Lh * H * D * 2
    floor_ms = kv_bytes / bandwidth * 1e3
    return [dict(kind="cached", provider="cuda", users=users, cands=cands, hist=hist, H=H, D=D, ms=ms,
                 kv_read_ms=floor_ms, ratio=ms / floor_ms)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bandwidth", type=float, default=4.8e12, help="bytes/s of device memory (H200: 4.8e12)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    ok, why = cuda_impl.available()
    if not torch.cuda.is_available() or not ok:
        print(f"needs a CUDA device and the extension: {why or 'no CUDA device'}")
        return 2
    shapes = [(2, 512, 2, 128), (16, 200, 1, 64)] if args.quick else [(16, 4096, 4, 128), (128, 200, 1, 64)]
    rows = attention_rows(shapes, args.quick)
    rows += cached_rows(4 if args.quick else 16, 256 if args.quick else 1024, 1024 if args.quick else 4096,
                        4, 128, args.bandwidth, args.quick)
    for r in rows:
        print(json.dumps(r))
    device = torch.cuda.get_device_name(0).replace(" ", "_")
    header = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, cuda=torch.version.cuda,
                  time=datetime.datetime.now().isoformat(timespec="seconds"), quick=args.quick)
    out = Path(args.out) / f"cuda_{device}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(header=header, rows=rows), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
