"""Benchmark of HSTU attention backends: naive op, fused Triton kernels, SDPA yardstick, CUDA backend.

Providers:
    naive   the PyTorch reference op (``backend="torch"``: pads to N x N, fp32 compute)
    triton  the fused Triton kernels (``backend="triton"``), position + time bias computed in-kernel
    sdpa    ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)`` on the padded [B, H, N, D] batch:
            causal softmax, no bias; the FlashAttention-class yardstick
    cuda    the CUDA backend (skipped where ``backend_reasons`` gives a reason it cannot run)

Modes fwd, bwd (backward only, from a stored forward graph), fwd+bwd. For each it reports the median time
(``triton.testing.do_bench``), TFLOP/s with causal forward FLOPs = 2 * H * D * sum(n^2) (backward 2.5x, fwd+bwd 3.5x;
the same useful FLOPs for every provider, also SDPA, which computes the padded N x N), and peak CUDA memory.
Batches: full length (every sequence N) and jagged (lengths uniform in [0.9 N, N]). bf16, position + time bias on
(per-head tables, HSTU's default time boundaries: 1 hour, 1 day, 1 week, 30 days).

Before timing a shape, the Triton output and gradients are checked against the naive op (2x rule against float64
on a sub-batch); a shape that fails is reported with ``correct = False`` and no speedup. Results go to
``bench/results/attention_<device>_<time>.{csv,json}`` (the JSON header holds device, torch/triton versions) and a
plot (if matplotlib is installed).

    python bench/bench_attention.py              # the five shapes of SHAPES
    python bench/bench_attention.py --quick      # a small smoke run
    python bench/bench_attention.py --compile-check [--dtype fp32] [--shapes 1,1,1,64]   # no GPU needed:
        # compile every autotune config for sm_90 and print ptxas' registers / spills and the shared memory
"""

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import Timer, env_header, grouped_bars, pyplot, save_figure, write_results

SHAPES = [(128, 200, 1, 64), (256, 256, 4, 128), (64, 1024, 4, 128), (16, 4096, 4, 128), (8, 8192, 4, 128)]
QUICK_SHAPES = [(8, 200, 1, 64), (4, 1024, 2, 128)]
PROVIDERS = ("naive", "triton", "sdpa", "cuda")
MODES = ("fwd", "bwd", "fwd+bwd")
BOUNDARIES = (3600, 86400, 604800, 2592000)
MODE_FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes and fewer repetitions: a smoke run")
    p.add_argument("--shapes", type=str, default=None,
                   help="semicolon-separated B,N,H,D shapes (default: the five of the full sweep)")
    p.add_argument("--providers", type=str, default=",".join(PROVIDERS), help="comma-separated providers")
    p.add_argument("--modes", type=str, default=",".join(MODES), help="comma-separated modes")
    p.add_argument("--batches", type=str, default="full,jagged", help="full and/or jagged")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--ts-dtype", choices=("int64", "int32"), default="int64", help="timestamps' dtype")
    p.add_argument("--no-bias", action="store_true", help="turn the position and time bias off")
    p.add_argument("--naive-max-n", type=int, default=4096,
                   help="skip the naive op above this N (it pads to N x N in fp32: at N = 8192 it runs out of memory)")
    p.add_argument("--out", type=str, default=str(ROOT / "bench" / "results"), help="output folder")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile-check", action="store_true",
                   help="no GPU needed: compile every autotune config for sm_90 and print registers, spills, smem")
    p.add_argument("--kernels", type=str, default="fwd,bwd,cached",
                   help="with --compile-check: the kernels to compile (comma-separated fwd, bwd, cached)")
    p.add_argument("--max-configs", type=int, default=None,
                   help="with --compile-check: only the first configs of each kernel")
    return p.parse_args(argv)


def make_batch(torch, B, N, H, D, *, jagged, dtype, ts_dtype, bias, seed, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    if jagged:
        lengths = torch.randint(math.ceil(0.9 * N), N + 1, (B,), generator=g)
    else:
        lengths = torch.full((B,), N)
    offsets = torch.zeros(B + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    L = int(offsets[-1])
    batch = dict(
        q=torch.randn(L, H, D, generator=g).to(dtype),
        k=torch.randn(L, H, D, generator=g).to(dtype),
        v=torch.randn(L, H, D, generator=g).to(dtype),
        seq_offsets=offsets,
        max_seq_len=N,
    )
    if bias:
        # timestamps: increasing seconds within each sequence from 2001 on, gaps of seconds to a day; rebased per
        # sequence so the longest (8192 tokens) stays below 2^31 for the int32 path
        gaps = torch.randint(1, 100_000, (L,), generator=g).cumsum(0)
        first = offsets[:-1].repeat_interleave(lengths)
        gaps = gaps - (gaps[first] - torch.randint(1, 100_000, (1,), generator=g))
        batch["timestamps"] = (1_000_000_000 + gaps).to(ts_dtype)
        batch["pos_weight"] = 0.1 * torch.randn(H, 2 * N - 1, generator=g)
        batch["time_weight"] = 0.1 * torch.randn(H, len(BOUNDARIES) + 1, generator=g)
        batch["time_boundaries"] = torch.tensor(BOUNDARIES, dtype=torch.int64)
    batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    return batch, lengths.tolist()


def padded(torch, batch, lengths, N):
    """The jagged q, k, v as [B, H, N, D] for SDPA (zero padding)."""
    from hstu_kernels import jagged_to_padded

    out = []
    for name in ("q", "k", "v"):
        x, _ = jagged_to_padded(batch[name], batch["seq_offsets"], N)
        out.append(x.transpose(1, 2).contiguous())
    return out


def provider_fn(torch, provider, batch, lengths, N):
    """A closure running the provider's forward, with its differentiable inputs (leaves requiring grad)."""
    from hstu_kernels import hstu_attention

    if provider == "sdpa":
        q, k, v = [x.detach().requires_grad_(True) for x in padded(torch, batch, lengths, N)]
        F = torch.nn.functional

        def run():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        return run, [q, k, v]
    backend = {"naive": "torch", "triton": "triton", "cuda": "cuda"}[provider]
    inputs = dict(batch)
    leaves = []
    for name in ("q", "k", "v", "pos_weight", "time_weight"):
        if name in inputs:
            inputs[name] = inputs[name].detach().requires_grad_(True)
            leaves.append(inputs[name])

    def run():
        # check=False: no host synchronisation inside the timed region (arguments are checked once beforehand)
        return hstu_attention(**inputs, backend=backend, check=False)

    with torch.no_grad():
        hstu_attention(**inputs, backend=backend, check=True)  # validate the arguments once
    return run, leaves


def time_mode(torch, do_bench, run, leaves, mode, quick):
    """Median ms (``do_bench``) and peak memory (MiB above what was allocated before, one run) of one mode."""
    rep, warmup = (20, 5) if quick else (100, 25)

    def zero_grads():
        for x in leaves:
            x.grad = None

    if mode == "fwd":
        def fn():
            with torch.no_grad():
                run()
    elif mode == "fwd+bwd":
        def fn():
            zero_grads()
            out = run()
            out.backward(grad)
    else:  # bwd: backward of a stored graph, retained for repeated calls
        out = run()
        grad_out = torch.randn_like(out)

        def fn():
            zero_grads()
            out.backward(grad_out, retain_graph=True)
    if mode == "fwd+bwd":
        with torch.no_grad():
            grad = torch.randn_like(run())
    timer = Timer(torch, torch.device("cuda"))
    timer.sync()
    ms = do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    timer.sync()
    base = timer.peak_reset()
    fn()
    timer.sync()
    peak_mib = timer.peak_mib(base)
    zero_grads()
    return ms, peak_mib


def warm_up(torch, batch, lengths, N):
    """One Triton forward + backward on the timed batch: the autotuner picks its configs on this batch, not on the
    correctness check's sub-batch (both share one autotune key)."""
    run, leaves = provider_fn(torch, "triton", batch, lengths, N)
    run().float().sum().backward()
    torch.cuda.synchronize()


def check_correct(torch, batch, lengths, max_b=2):
    """2x rule on a sub-batch (the first max_b sequences): triton vs float64 within 2x the naive op's error."""
    from hstu_kernels import hstu_attention
    from hstu_kernels.ops.hstu_attention import naive_hstu_attention

    b = min(max_b if max(lengths) < 4096 else 1, len(lengths))  # the float64 reference is N x N
    end = int(batch["seq_offsets"][b])
    sub = dict(batch)
    sub["seq_offsets"] = batch["seq_offsets"][: b + 1]
    for name in ("q", "k", "v", "timestamps"):
        if name in sub:
            sub[name] = batch[name][:end]
    names = [n for n in ("q", "k", "v", "pos_weight", "time_weight") if n in sub]
    device = batch["q"].device
    g = torch.Generator(device=device).manual_seed(7)

    def grads(fn, cast, **kw):
        inp = dict(sub)
        for n in names:
            inp[n] = sub[n].detach().to(cast if cast is not None else sub[n].dtype).requires_grad_(True)
        out = fn(**inp, **kw)
        go = grad_out.to(out.dtype)
        return [out] + list(torch.autograd.grad(out, [inp[n] for n in names], go))

    grad_out = torch.randn(end, sub["q"].shape[1], sub["v"].shape[2], device=device, generator=g)
    ref = grads(naive_hstu_attention, torch.float64)
    low = grads(hstu_attention, None, backend="torch")
    got = grads(hstu_attention, None, backend="triton")
    report = {}
    ok = True
    for name, r, lo, t in zip(["out"] + names, ref, low, got):
        err = (t.double() - r).abs().max().item()
        low_err = (lo.double() - r).abs().max().item()
        atol = 1e-3 * max(1.0, r.abs().max().item())
        good = bool(torch.isfinite(t).all()) and err <= 2 * low_err + atol
        ok &= good
        report[name] = dict(err=err, naive_err=low_err, ok=good)
    return ok, report


def compile_check(args):
    """Compile the kernels' autotune configs for sm_90 (H100/H200) without a GPU; print what ptxas reports."""
    os.environ.pop("TRITON_INTERPRET", None)
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hstu_kernels.ops.hstu_attention import triton_bwd, triton_fwd
    from hstu_kernels.ops.hstu_cached_attention import triton_fwd as cached

    tdt = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}[args.dtype]
    ts = "i32" if args.ts_dtype == "int32" else "i64"
    try:  # the ptxas Triton itself runs for sm_90
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(90).path
    except (ImportError, TypeError, AttributeError):
        bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
        ptxas = next((p for p in (os.path.join(bindir, n) for n in ("ptxas-blackwell", "ptxas")) if os.path.exists(p)),
                     "ptxas")
    D = 128 if not args.shapes else int(args.shapes.split(";")[0].split(",")[3])
    print(f"triton {triton.__version__}, sm_90 (ptxas {os.path.basename(ptxas)})")
    bias = not args.no_bias
    for kind, fn, configs in (("fwd", triton_fwd.hstu_attention_fwd_kernel, triton_fwd._fwd_configs()),
                              ("bwd", triton_bwd.hstu_attention_bwd_kernel, triton_bwd._bwd_configs()),
                              ("cached", cached.hstu_cached_attention_fwd_kernel, cached._configs())):
        if kind not in args.kernels.split(","):
            continue
        configs = configs[: args.max_configs]
        types = {n: "i32" for n in fn.arg_names}
        for n in ("Q", "K", "V", "Out", "DO", "DK", "DV_", "KC", "VC"):
            types[n] = f"*{tdt}"
        types.update(DQ="*fp32", VBad="*i8", VBadCum="*i32", SeqOffsets="*i64", NumTargets="*i64", CandOffsets="*i64", CacheOffsets="*i64",
                     TS=f"*{ts}", QTS=f"*{ts}", CTS=f"*{ts}", PW="*fp32", TW="*fp32", TB="*i64", DPW="*fp32",
                     DTW="*fp32", alpha="fp32", scale="fp32")
        for c in configs:
            consts = dict(DQK=D, DV=D, BLOCK_DQK=D, BLOCK_DV=D, HAS_TARGETS=True, HAS_WINDOW=True, HAS_POS=bias,
                          HAS_TIME=bias, NUM_BOUNDARIES=len(BOUNDARIES), TIME_I32=ts == "i32",
                          INPUT_PRECISION="ieee" if tdt == "fp32" else "tf32", FAST_SIGMOID=tdt == "bf16" and kind != "bwd", **c.kwargs)
            if kind == "bwd":
                consts.update(NBP=8, COMPUTE_DPW=bias, COMPUTE_DTW=bias)
            if kind == "cached":
                del consts["HAS_TARGETS"]
            sig = {n: ("constexpr" if n in consts else types[n]) for n in fn.arg_names}
            # what Triton's launcher sees on a GPU: 16-aligned pointers and strides (head dims multiple of 16)
            aligned = [n for n in fn.arg_names if n in ("Q", "K", "V", "Out", "DO", "DQ", "DK", "DV_", "KC", "VC")
                       or (n.startswith("stride") and not n.endswith(("pwh", "twh")))]
            attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
            tag = f"{kind} {tdt} D={D} {c.kwargs} warps={c.num_warps} stages={c.num_stages}"
            try:
                k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                                   target=GPUTarget("cuda", 90, 32),
                                   options={"num_warps": c.num_warps, "num_stages": c.num_stages})
            except Exception as e:  # noqa: BLE001
                print(f"{tag}: FAILED {type(e).__name__}: {str(e)[-600:]}")
                continue
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(k.asm["ptx"])
            out = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True,
                                 check=False, text=True).stderr
            os.unlink(f.name)
            info = "; ".join(line.split(":", 1)[-1].strip() for line in out.splitlines()
                             if "registers" in line or "spill" in line)
            ptx = k.asm["ptx"]
            if "C7515" in out:  # ptxas could not keep the wgmma pipeline asynchronous: a real slowdown
                info = "WGMMA SERIALIZED (C7515); " + "; ".join(
                    line.split(":", 1)[-1].strip() for line in out.splitlines() if "Used" in line or "spill" in line)
            print(f"{tag}: smem {k.metadata.shared} B, {info or out[-200:]}, wgmma {ptx.count('wgmma.mma_async')}, "
                  f"cp.async {ptx.count('cp.async.cg') + ptx.count('cp.async.ca')}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.compile_check:
        compile_check(args)
        return
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_attention.py needs a CUDA GPU (none found); run it on a GPU machine, --help works anywhere")
    try:
        from triton.testing import do_bench
    except ImportError:
        sys.exit("bench_attention.py needs triton (pip install triton)")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("0", ""):
        sys.exit("unset TRITON_INTERPRET: the benchmark times compiled kernels")
    from hstu_kernels.ops.hstu_attention import backend_reasons

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    ts_dtype = {"int64": torch.int64, "int32": torch.int32}[args.ts_dtype]
    if args.shapes:
        shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
    else:
        shapes = QUICK_SHAPES if args.quick else SHAPES
    providers = [p for p in args.providers.split(",") if p]
    modes = [m for m in args.modes.split(",") if m]
    batches = [b for b in args.batches.split(",") if b]
    if args.quick:
        batches = batches[:1] if len(batches) > 1 else batches

    header = env_header(torch, torch.device("cuda"))
    device = header["device"]
    header.update(dtype=args.dtype, ts_dtype=args.ts_dtype, bias=not args.no_bias, boundaries=list(BOUNDARIES),
                  quick=args.quick)
    print(json.dumps(header))
    rows = []
    for B, N, H, D in shapes:
        for kind in batches:
            batch, lengths = make_batch(torch, B, N, H, D, jagged=(kind == "jagged"), dtype=dtype,
                                        ts_dtype=ts_dtype, bias=not args.no_bias, seed=args.seed)
            fwd_flops = 2.0 * H * D * sum(n * n for n in lengths)
            if "triton" in providers:
                warm_up(torch, batch, lengths, N)
            correct, detail = check_correct(torch, batch, lengths)
            if not correct:
                print(f"!! ({B},{N},{H},{D}) {kind}: triton FAILED its correctness check: {detail}")
            results = {}
            for provider in providers:
                if provider == "cuda" and backend_reasons(batch["q"], batch["k"], batch["v"])["cuda"]:
                    continue
                if provider == "naive" and N > args.naive_max_n:
                    continue
                for mode in modes:
                    row = dict(B=B, N=N, H=H, D=D, batch=kind, provider=provider, mode=mode, correct=correct,
                               tokens=sum(lengths))
                    try:
                        run, leaves = provider_fn(torch, provider, batch, lengths, N)
                        ms, peak = time_mode(torch, do_bench, run, leaves, mode, args.quick)
                        row.update(ms=ms, tflops=fwd_flops * MODE_FLOP_FACTOR[mode] / (ms * 1e-3) / 1e12,
                                   peak_mib=peak, error=None)
                    except torch.cuda.OutOfMemoryError:
                        row.update(ms=None, tflops=None, peak_mib=None, error="OOM")
                    except Exception as e:  # noqa: BLE001 - keep the sweep going, record why
                        row.update(ms=None, tflops=None, peak_mib=None, error=f"{type(e).__name__}: {e}"[:300])
                    finally:
                        run = leaves = None
                        torch.cuda.empty_cache()
                    results[(provider, mode)] = row
                    rows.append(row)
            for mode in modes:  # speedups of triton, only when it passed its check
                t = results.get(("triton", mode))
                for other in ("naive", "sdpa"):
                    o = results.get((other, mode))
                    if t is not None:
                        ok = correct and t["ms"] and o is not None and o["ms"]
                        t[f"speedup_vs_{other}"] = (o["ms"] / t["ms"]) if ok else None
            for (provider, mode), r in results.items():
                ms = f"{r['ms']:.3f} ms" if r["ms"] else r["error"]
                tf = f"{r['tflops']:.1f} TFLOP/s" if r["tflops"] else ""
                mem = f"{r['peak_mib']:.0f} MiB" if r["peak_mib"] is not None else ""
                extra = "".join(f"  x{r[k]:.2f} vs {k[11:]}" for k in ("speedup_vs_naive", "speedup_vs_sdpa")
                                if r.get(k))
                print(f"({B},{N},{H},{D}) {kind:6s} {provider:6s} {mode:8s} {ms:>12s} {tf:>16s} {mem:>10s}{extra}")
            del batch

    out_dir = Path(args.out)
    stem = "attention_{}_{}{}".format(
        device.replace(" ", "_").replace("/", "_"), datetime.datetime.now().strftime("%Y%m%d_%H%M%S"),
        "_quick" if args.quick else "")
    fields = ["B", "N", "H", "D", "batch", "provider", "mode", "tokens", "ms", "tflops", "peak_mib", "correct",
              "speedup_vs_naive", "speedup_vs_sdpa", "error"]
    write_results(out_dir, stem, dict(header=header, rows=rows), fields)
    if not args.no_plot:
        plot(rows, out_dir / f"{stem}.png", header)


def plot(rows, path, header):
    """TFLOP/s bars of each provider over the shapes, one panel per batch kind and mode."""
    plt = pyplot()
    if plt is None:
        return
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    kinds = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(len(kinds), len(modes), figsize=(5 * len(modes), 4 * len(kinds)), squeeze=False)
    shapes = sorted({(r["B"], r["N"], r["H"], r["D"]) for r in rows}, key=lambda s: s[1])
    labels = [f"{b}x{n}\nH{h} D{d}" for b, n, h, d in shapes]
    providers = sorted({r["provider"] for r in rows})
    for i, kind in enumerate(kinds):
        for j, mode in enumerate(modes):
            series = {}
            for provider in providers:
                ys = []
                for s in shapes:
                    r = next((r for r in rows if (r["B"], r["N"], r["H"], r["D"]) == s and r["batch"] == kind
                              and r["mode"] == mode and r["provider"] == provider), None)
                    ys.append(r["tflops"] if r and r["tflops"] else 0.0)
                series[provider] = ys
            grouped_bars(axes[i][j], labels, series, "TFLOP/s", f"{mode}, {kind} batch")
    fig.suptitle(f"HSTU attention, {header['device']}, {header['dtype']}, bias={'on' if header['bias'] else 'off'}")
    save_figure(plt, fig, path)


if __name__ == "__main__":
    main()
