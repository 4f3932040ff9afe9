"""Benchmark of M-FALCON candidate scoring: naive per-candidate forwards, one target-aware pass, and
the KV-cached M-FALCON path, on the MovieLens model shape; plus ranking the whole catalogue for every user.

Model: ``HSTURecommender(ModelConfig(num_items=3706, dim=64, num_layers=2, num_heads=1, max_seq_len=200))``,
eval mode, random weights (bias tables filled with small random values so the correctness check exercises them;
speed does not depend on the weights), time bias on. One user history of 199 events; m candidates drawn from the
catalogue without replacement. Methods, all through the encoder (the heads are the same for every method):

    naive        each candidate scored by a full ``encoder.forward`` of history + that candidate
                 (``num_targets=1``), m such sequences in jagged batches of ``--naive-batch``
    one-pass     one ``encoder.forward`` of history + all m candidates as targets (``num_targets=m``)
    mfalcon      ``encoder.prefill`` of the history once, then ``encoder.score_candidates`` with microbatch
                 size b_m; reported as "scoring" (the cache exists) and "prefill+scoring"

Every method uses the same attention backend: ``--fused`` (the default when CUDA is available) runs
``HSTUEncoder(fused=True)`` (Triton attention in ``forward``/``prefill``, the Triton cached-attention kernel in
``score_candidates``); otherwise the PyTorch reference ops. The backend files that actually ran are recorded
(``backends_ran``). On a GPU the default dtype is bf16 autocast (as in training), on a CPU fp32.

Before timing, the three methods' candidate outputs are compared at one m (the smallest): naive and every
M-FALCON b_m against the one-pass forward; the bench stops with an AssertionError if they disagree.

The FLOP-ratio bound (``flop_counts``) is the useful matmul FLOPs of the method it stands beside, relative to
naive: m * F(full forward of history + 1) over the method's FLOPs. For M-FALCON scoring it is
F(full forward of n = h + 1 tokens) / F(one cached candidate step), about 150x at the MovieLens shape.

Whole-catalogue ranking: the users of ``--data-dir`` (default ``../shared/data/ml-1m-half`` when present), each
user's last <= max_seq_len - 1 events prefilled in batches of ``--user-batch`` users, every item of the data's
catalogue scored for every user by ``HSTURecommender.score_candidates`` (microbatch ``--rank-microbatch``), the
items of the cached window masked out and the top ``--topk`` by predicted rating taken back to the host. It
reports the total time, the per-user cost and the 6,040-user (full MovieLens-1M) extrapolation. ``--max-users``
ranks an evenly spaced subset of users (their history lengths then follow the whole data's).

Timing: median of ``--repeats`` runs after ``--warmup`` runs, ``torch.cuda.synchronize`` around each on a GPU.
The naive method's cost per candidate is constant (independent batches), so when timing it at m would take more
than ``--max-naive-seconds`` it is timed on whole batches of a subset of the candidates and scaled linearly
(``naive_extrapolated`` in the results, and "(extrapolated)" in the table).

Results: ``bench/results/mfalcon_<device>.{json,csv}`` (header: device, torch/triton versions, shapes, dtype,
backend) and a plot ``.png`` of candidates/s vs m (if matplotlib is installed).

This file is the entry point (flags, defaults, the run's order); its parts are in ``bench/mfalcon/``: the FLOP
model (``flops``), the model and methods (``methods``), the agreement check and timed sweep (``sweep``), the
ranking (``ranking``), the table and plot (``report``). Timing, headers and results files: ``bench/common.py``.

    python bench/bench_mfalcon.py                 # the MovieLens shapes; fused + bf16 on a GPU
    python bench/bench_mfalcon.py --quick         # a small smoke run (history 31, m in {16, 64})
    python bench/bench_mfalcon.py --device cpu --threads 1 --repeats 5 --max-naive-seconds 300 --note "..."
        # the committed CPU run (bench/results/mfalcon_cpu-2core.*); --max-users N ranks a subset
"""

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import Timer, env_header, slug, write_results
from bench.mfalcon.flops import flop_counts, method_bound  # noqa: F401 (method_bound: for the tests)
from bench.mfalcon.methods import Methods, make_model
from bench.mfalcon.ranking import DEFAULT_DATA_DIR, print_ranking, rank_catalogue
from bench.mfalcon.report import plot
from bench.mfalcon.sweep import check_agreement, time_methods

MOVIELENS_ITEMS = 3706

FULL = dict(history=199, m=(100, 1000, 3706), bm=(64, 256, 1024))
QUICK = dict(history=31, m=(16, 64), bm=(8, 32))

CSV_FIELDS = ["method", "bm", "m", "median_s", "min_s", "cands_per_s", "speedup_vs_naive", "bound",
              "speedup_over_bound", "naive_extrapolated", "naive_measured_candidates", "prefill_median_s", "peak_mib"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (history 31, m in {16, 64}, b_m in {8, 32}, a few users): a smoke run")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    fused = p.add_mutually_exclusive_group()
    fused.add_argument("--fused", dest="fused", action="store_true", default=None,
                       help="fused (Triton) attention for every method (default when CUDA is available)")
    fused.add_argument("--no-fused", dest="fused", action="store_false", help="the PyTorch reference ops")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                   help="bf16 = bf16 autocast (default on CUDA); fp32 (default on CPU)")
    p.add_argument("--history", type=int, default=None, help="history length h (default 199; quick 31); "
                   "the model's max_seq_len is h + 1")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--num-items", type=int, default=MOVIELENS_ITEMS,
                   help="catalogue of the (a)-(c) model (the ranking model takes the data's item count)")
    p.add_argument("--m", type=str, default=None, help="comma-separated candidate counts (default 100,1000,3706)")
    p.add_argument("--bm", type=str, default=None, help="comma-separated M-FALCON microbatch sizes "
                   "(default 64,256,1024)")
    p.add_argument("--naive-batch", type=int, default=None,
                   help="sequences per naive forward (default 2048 on CUDA, 64 on CPU, 16 quick)")
    p.add_argument("--max-naive-seconds", type=float, default=None,
                   help="time budget of the naive method at one m (all repeats); beyond it the naive cost is "
                   "measured on whole batches of a subset and scaled linearly (default 120; quick 20)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 10 CUDA, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 2 CUDA, 1 CPU)")
    p.add_argument("--data-dir", type=str, default=None,
                   help=f"MovieLens folder for the whole-catalogue ranking (default {DEFAULT_DATA_DIR} if present)")
    p.add_argument("--no-rank", action="store_true", help="skip the whole-catalogue ranking")
    p.add_argument("--max-users", type=int, default=None,
                   help="rank an evenly spaced subset of this many users (default all; quick 6)")
    p.add_argument("--user-batch", type=int, default=None,
                   help="users per prefill / scoring batch (default 512 CUDA, 4 CPU, 3 quick)")
    p.add_argument("--rank-microbatch", type=int, default=None,
                   help="b_m of the whole-catalogue ranking (default 1024; quick 32)")
    p.add_argument("--topk", type=int, default=10, help="items kept per user in the ranking")
    p.add_argument("--out", type=str, default=str(ROOT / "bench" / "results"), help="output folder")
    p.add_argument("--tag", type=str, default=None,
                   help="file name tag (default: the device, e.g. nvidia-h100-80gb-hbm3 or cpu-2core)")
    p.add_argument("--note", type=str, default=None, help="free text stored in the results (e.g. machine load)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default torch's); 1 is steadier on a CPU shared with other jobs")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def fill_defaults(args, on_cuda):
    """The flags left unset take the quick, CUDA or CPU default (the CPU ones measured best on a 2-core machine)."""
    if args.naive_batch is None:
        args.naive_batch = 16 if args.quick else (2048 if on_cuda else 64)
    if args.max_naive_seconds is None:
        args.max_naive_seconds = 20.0 if args.quick else 120.0
    if args.repeats is None:
        args.repeats = 2 if args.quick else (10 if on_cuda else 3)
    if args.warmup is None:
        args.warmup = 1 if (args.quick or not on_cuda) else 2
    if args.max_users is None and args.quick:
        args.max_users = 6
    if args.user_batch is None:
        args.user_batch = 3 if args.quick else (512 if on_cuda else 4)
    if args.rank_microbatch is None:
        args.rank_microbatch = 32 if args.quick else 1024


def main(argv=None):
    args = parse_args(argv)
    import torch

    from hstu.train import resolve_device

    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    on_cuda = device.type == "cuda"
    base = QUICK if args.quick else FULL
    history = args.history if args.history is not None else base["history"]
    ms = [int(x) for x in args.m.split(",")] if args.m else list(base["m"])
    bms = [int(x) for x in args.bm.split(",")] if args.bm else list(base["bm"])
    fused = on_cuda if args.fused is None else args.fused
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if on_cuda else "fp32")
    fill_defaults(args, on_cuda)
    if max(ms) > args.num_items:
        sys.exit(f"--m {max(ms)} exceeds the catalogue (--num-items {args.num_items})")
    if fused and os.environ.get("TRITON_INTERPRET", "0") not in ("0", "") and on_cuda:
        sys.exit("unset TRITON_INTERPRET: the benchmark times compiled kernels")
    max_seq_len = history + 1
    if dtype == "bf16":
        def ctx():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        ctx = contextlib.nullcontext
    dtype_desc = "bf16 autocast (weights fp32, matmuls and attention inputs bf16)" if dtype == "bf16" else "fp32"
    backend_desc = "fused (Triton attention + Triton cached attention)" if fused else "PyTorch reference ops"

    flops = flop_counts(history, args.dim, args.layers)
    header = env_header(torch, device)
    tag = args.tag or (slug(header["device"]) if on_cuda else f"cpu-{os.cpu_count()}core")
    header.update(
        torch_threads=torch.get_num_threads(), dtype=dtype, dtype_desc=dtype_desc, fused=fused, backend=backend_desc,
        model=dict(num_items=args.num_items, dim=args.dim, num_layers=args.layers, num_heads=args.heads,
                   max_seq_len=max_seq_len, time_bias=True, pos_bias=True),
        history=history, m=ms, bm=bms, naive_batch=args.naive_batch, repeats=args.repeats, warmup=args.warmup,
        max_naive_seconds=args.max_naive_seconds, quick=args.quick, note=args.note,
        flops=dict(**flops, bound_scoring_blocks_only=flop_counts(history, args.dim, args.layers, False)["bound_scoring"]),
    )
    print(json.dumps({k: v for k, v in header.items() if k != "flops"}))
    print(f"FLOP-ratio bound of M-FALCON scoring (full forward of h + 1 = {history + 1} tokens / one cached step): "
          f"{flops['bound_scoring']:.1f}x ({flops['full_forward'] / 1e6:.2f} / {flops['cached_step'] / 1e6:.4f} MFLOP; "
          f"{header['flops']['bound_scoring_blocks_only']:.1f}x without the embedding MLP)")

    timer = Timer(torch, device)
    model, _ = make_model(torch, args.num_items, args, max_seq_len, fused, device, args.seed)
    meth = Methods(torch, model.encoder, history, device, args.naive_batch)
    perm = torch.randperm(args.num_items, generator=torch.Generator().manual_seed(args.seed + 2)).add_(1).to(device)

    # the methods agree on the candidate outputs at the smallest m before any is timed
    check, header["backends_ran"] = check_agreement(torch, meth, perm[:min(ms)], bms, dtype, ctx)
    rows = time_methods(torch, meth, perm, ms, bms, args, timer, ctx, history)

    ranking = None
    if not args.no_rank:
        ranking = rank_catalogue(torch, args, ctx, timer, device, fused, max_seq_len, args.seed)
        if ranking:
            print_ranking(ranking)

    out_dir = Path(args.out)
    stem = f"mfalcon_{tag}{'_quick' if args.quick else ''}"
    result = dict(header=header, check=check, rows=rows, ranking=ranking)
    write_results(out_dir, stem, result, CSV_FIELDS, ["ranking " + json.dumps(ranking)] if ranking else [])
    if not args.no_plot:
        plot(rows, out_dir / f"{stem}.png", header)
    return result


if __name__ == "__main__":
    main()
