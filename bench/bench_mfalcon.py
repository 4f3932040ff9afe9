"""Benchmark of M-FALCON candidate scoring (issue 4): naive per-candidate forwards, one target-aware pass, and
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
``score_candidates`` once it is available); otherwise the PyTorch reference ops. The backend files that actually
ran are recorded (``backends_ran``). On a GPU the default dtype is bf16 autocast (as in training), on a CPU fp32.

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

    python bench/bench_mfalcon.py                 # the issue's shapes; fused + bf16 on a GPU
    python bench/bench_mfalcon.py --quick         # a small smoke run (history 31, m in {16, 64})
    python bench/bench_mfalcon.py --device cpu --threads 1 --repeats 5 --max-naive-seconds 300 --note "..."
        # the committed CPU run (bench/results/mfalcon_cpu-2core.*); --max-users N ranks a subset
"""

import argparse
import contextlib
import csv
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "ml-1m-half"
FULL_ML1M_USERS = 6040
MOVIELENS_ITEMS = 3706

FULL = dict(history=199, m=(100, 1000, 3706), bm=(64, 256, 1024))
QUICK = dict(history=31, m=(16, 64), bm=(8, 32))

# agreement of the methods' candidate outputs, relative to max(1, max |one-pass output|)
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}


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


# ----------------------------------------------------------------------------------------------------------------
# FLOPs


def hstu_flops(tokens, attn_pairs, dim, num_layers, embedding=True):
    """Matmul FLOPs of the HSTU encoder on ``tokens`` tokens with ``attn_pairs`` valid (query, key) pairs.

    Per token: the input embedding MLP ``Linear(2D, D) -> SiLU -> Linear(D, D)`` = 2*2D*D + 2*D*D = 6 D^2
    (if ``embedding``), and per layer the projections ``Linear(D, 4D)`` + ``Linear(D, D)`` = 2*D*4D + 2*D*D =
    10 D^2. Per layer and valid pair: q.k and a*v, 2 * 2 * H * d = 4 D FLOPs (H * d = D, so the head count
    does not matter). Elementwise work (SiLU, bias lookups, LayerNorm) is left out::

        F = tokens * (6 D^2 + num_layers * 10 D^2) + num_layers * 4 D * attn_pairs
    """
    per_token = (6 * dim * dim if embedding else 0) + num_layers * 10 * dim * dim
    return tokens * per_token + num_layers * 4 * dim * attn_pairs


def flop_counts(history, dim, num_layers, embedding=True):
    """The useful FLOPs of each method for one user with history h (``hstu_flops``' formula).

    full forward of history + 1 candidate (naive, per candidate): n = h + 1 tokens, causal pairs
        sum_{i=1..n} i = n (n + 1) / 2 (the candidate sees the h history tokens and itself, like a last row);
    one cached candidate step (M-FALCON, per candidate): 1 token, h + 1 pairs (history + itself);
    prefill: h tokens, h (h + 1) / 2 pairs;
    one pass with m candidates: h + m tokens, h (h + 1) / 2 + m (h + 1) pairs.

    The bound of M-FALCON scoring is ``full / step``; at h = 199, D = 64, 2 layers it is 151.2x with the
    embedding MLP (144.7x for the blocks alone, the issue's "about 140x").
    """
    n = history + 1
    full = hstu_flops(n, n * (n + 1) // 2, dim, num_layers, embedding)
    step = hstu_flops(1, history + 1, dim, num_layers, embedding)
    prefill = hstu_flops(history, history * (history + 1) // 2, dim, num_layers, embedding)
    return dict(full_forward=full, cached_step=step, prefill=prefill, bound_scoring=full / step)


def one_pass_flops(history, m, dim, num_layers, embedding=True):
    return hstu_flops(history + m, history * (history + 1) // 2 + m * (history + 1), dim, num_layers, embedding)


def method_bound(method, m, history, dim, num_layers):
    """m * F(full forward) / F(method at m): the speedup over naive if every FLOP cost the same."""
    f = flop_counts(history, dim, num_layers)
    if method == "naive":
        return 1.0
    if method == "one-pass":
        return m * f["full_forward"] / one_pass_flops(history, m, dim, num_layers)
    if method == "mfalcon-scoring":
        return f["bound_scoring"]
    if method == "mfalcon-prefill+scoring":
        return m * f["full_forward"] / (f["prefill"] + m * f["cached_step"])
    raise ValueError(method)


# ----------------------------------------------------------------------------------------------------------------
# helpers


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return None


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def median(xs):
    return statistics.median(xs) if xs else None


def make_model(torch, num_items, args, max_seq_len, fused, device, seed):
    """A random ``HSTURecommender`` in eval mode, bias tables filled with small random values."""
    from hstu.model import HSTURecommender, ModelConfig

    torch.manual_seed(seed)
    cfg = ModelConfig(num_items=num_items, dim=args.dim, num_layers=args.layers, num_heads=args.heads,
                      max_seq_len=max_seq_len, fused=fused)
    model = HSTURecommender(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.encoder.blocks:
            block.bias.pos_weight.copy_(0.1 * torch.randn(block.bias.pos_weight.shape, generator=g))
            block.bias.time_weight.copy_(0.1 * torch.randn(block.bias.time_weight.shape, generator=g))
    return model.to(device).eval(), cfg


def backends_ran(fn):
    """Run ``fn`` once and return, per op under hstu_kernels/ops (``hstu_attention``, ``hstu_cached_attention``),
    which backends actually ran: "torch" when a ``naive_*`` function was entered, "triton" / "cuda" when a
    function with that word in its name was (the dispatch's capability probes, ``unsupported_reasons`` and the
    like, do not count)."""
    import hstu_kernels

    ops = os.path.join(os.path.dirname(os.path.abspath(hstu_kernels.__file__)), "ops") + os.sep
    seen = set()

    def prof(frame, event, arg):
        if event == "call":
            f = frame.f_code.co_filename
            if f.startswith(ops):
                seen.add((f[len(ops):].split(os.sep)[0], frame.f_code.co_name))

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    ran = {}
    for op, name in seen:
        low = name.lower()
        if "reason" in low or "available" in low:
            continue
        for backend, hit in (("torch", low.startswith("naive_")), ("triton", "triton" in low), ("cuda", "cuda" in low)):
            if hit:
                ran.setdefault(op, set()).add(backend)
    return {op: sorted(b) for op, b in sorted(ran.items())}


class Timer:
    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def __call__(self, fn, repeats, warmup):
        """Seconds of each of ``repeats`` runs of ``fn`` after ``warmup`` untimed ones."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(repeats):
            self.sync()
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return times

    def peak_reset(self):
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
            return self.torch.cuda.memory_allocated()
        return 0

    def peak_mib(self, base):
        if self.cuda:
            return (self.torch.cuda.max_memory_allocated() - base) / 2**20
        return None


# ----------------------------------------------------------------------------------------------------------------
# the three methods


class Methods:
    """The naive, one-pass and M-FALCON scoring of one user's history against candidate item ids."""

    def __init__(self, torch, encoder, history, device, naive_batch):
        from hstu.actions import UNKNOWN

        self.torch, self.enc, self.device, self.UNKNOWN = torch, encoder, device, UNKNOWN
        g = torch.Generator().manual_seed(1234)
        h = history
        num_items = encoder.embedding.num_items
        self.h = h
        self.items = torch.randint(1, num_items + 1, (h,), generator=g).to(device)
        self.actions = torch.randint(2, 5, (h,), generator=g).to(device)  # negative / neutral / positive
        # seconds, increasing, gaps of minutes to days: every time bucket occurs
        self.ts = (978_300_000 + torch.randint(60, 400_000, (h,), generator=g).cumsum(0)).to(device)
        self.now = self.ts[-1:]  # the request time: the default candidate timestamp of score_candidates
        self.hist_offsets = torch.tensor([0, h], device=device)
        # naive: a [B, h + 1] batch of history + one candidate slot, reused for every batch
        n, B = h + 1, naive_batch
        self.B = B
        one = torch.ones(1, dtype=torch.int64, device=device)
        self.nb_items = torch.cat([self.items, one]).repeat(B).view(B, n)
        self.nb_actions = torch.cat([self.actions, self.UNKNOWN * one]).repeat(B)
        self.nb_ts = torch.cat([self.ts, self.now]).repeat(B)
        self.nb_offsets = torch.arange(B + 1, device=device) * n
        self.nb_targets = torch.ones(B, dtype=torch.int64, device=device)

    def naive(self, cands):
        n, outs = self.h + 1, []
        for s in range(0, cands.shape[0], self.B):
            c = cands[s:s + self.B]
            b = c.shape[0]
            items = self.nb_items[:b].clone()
            items[:, -1] = c
            out = self.enc(items.view(-1), self.nb_actions[:b * n], self.nb_offsets[:b + 1], self.nb_ts[:b * n],
                           self.nb_targets[:b], check=False)
            outs.append(out.view(b, n, -1)[:, -1])
        return self.torch.cat(outs)

    def one_pass(self, cands):
        torch, m = self.torch, cands.shape[0]
        items = torch.cat([self.items, cands])
        actions = torch.cat([self.actions, torch.full_like(cands, self.UNKNOWN)])
        ts = torch.cat([self.ts, self.now.expand(m)])
        offsets = torch.tensor([0, self.h + m], device=self.device)
        nt = torch.tensor([m], device=self.device)
        return self.enc(items, actions, offsets, ts, nt, check=False)[self.h:]

    def prefill(self):
        return self.enc.prefill(self.items, self.actions, self.hist_offsets, self.ts)

    def score(self, cache, cands, bm):
        offsets = self.torch.tensor([0, cands.shape[0]], device=self.device)
        return self.enc.score_candidates(cache, cands, offsets, microbatch_size=bm)


# ----------------------------------------------------------------------------------------------------------------
# whole-catalogue ranking


def rank_catalogue(torch, args, ctx, timer, device, fused, max_seq_len, seed):
    """Rank every item of the data's catalogue for its users through prefill + score_candidates."""
    data_dir = args.data_dir
    if data_dir is None:
        if not DEFAULT_DATA_DIR.is_dir():
            print(f"whole-catalogue ranking skipped: {DEFAULT_DATA_DIR} does not exist (pass --data-dir)")
            return None
        data_dir = str(DEFAULT_DATA_DIR)
    if not Path(data_dir).is_dir():
        print(f"whole-catalogue ranking skipped: --data-dir {data_dir} does not exist")
        return None
    import numpy as np
    from tqdm import tqdm

    from hstu.train import load_sequences

    t0 = time.perf_counter()
    _, seqs = load_sequences(data_dir, "ml-1m")
    load_s = time.perf_counter() - t0
    U_all, n_items = len(seqs), seqs.num_items
    users = np.arange(U_all)
    if args.max_users is not None and args.max_users < U_all:
        users = np.unique(np.linspace(0, U_all - 1, args.max_users).round().astype(np.int64))
    U = len(users)
    model, cfg = make_model(torch, n_items, args, max_seq_len, fused, device, seed)
    hmax = max_seq_len - 1
    # each user's last <= hmax events (the serving window), as host batches (pinned on a GPU)
    hi = seqs.offsets[users + 1]
    lo = np.maximum(seqs.offsets[users], hi - hmax)
    lengths = hi - lo
    actions_all = seqs.actions()
    pin = device.type == "cuda"
    batches = []
    for s in range(0, U, args.user_batch):
        sl = slice(s, s + args.user_batch)
        idx = np.concatenate([np.arange(a, b) for a, b in zip(lo[sl], hi[sl])])
        offs = np.concatenate([[0], np.cumsum(lengths[sl])])
        host = [torch.from_numpy(x) for x in (seqs.items[idx], actions_all[idx], seqs.timestamps[idx], offs,
                                             lengths[sl].astype(np.int64))]
        batches.append([x.pin_memory() if pin else x for x in host])
    B = args.user_batch
    all_items = torch.arange(1, n_items + 1, device=device).repeat(B)
    cand_offsets = torch.arange(B + 1, device=device) * n_items
    bm, k = args.rank_microbatch, min(args.topk, n_items)

    def run(batch):
        items, actions, ts, offs, lens = (x.to(device, non_blocking=True) for x in batch)
        b = lens.shape[0]
        cache = model.prefill(items, actions, offs, ts)
        scores = model.score_candidates(cache, all_items[:b * n_items], cand_offsets[:b + 1], microbatch_size=bm)
        r = scores.ratings.float().view(b, n_items)
        seg = torch.repeat_interleave(torch.arange(b, device=device), lens, output_size=items.shape[0])
        r[seg, items - 1] = float("-inf")  # the items of the cached window: already seen
        return r.topk(k, dim=1).indices.add_(1).cpu()

    with ctx():
        run(batches[0])  # warm-up: compilation, autotuning, allocator
        if len(batches) > 1 and batches[-1][4].shape[0] != batches[0][4].shape[0]:
            run(batches[-1])
        timer.sync()
        per_batch = []
        top = []
        t_start = time.perf_counter()
        for batch in tqdm(batches, desc="ranking users", unit="batch", disable=args.no_progress, file=sys.stderr):
            t = time.perf_counter()
            top.append(run(batch))
            per_batch.append(time.perf_counter() - t)
        timer.sync()
        total = time.perf_counter() - t_start
    top = torch.cat(top)
    assert top.shape == (U, k) and int(top.min()) >= 1 and int(top.max()) <= n_items
    per_user = total / U
    return dict(
        data_dir=str(Path(data_dir).resolve()), data_users=U_all, users=U, subset=U < U_all, items=n_items,
        model_num_items=cfg.num_items, mean_history=float(lengths.mean()), max_history=int(lengths.max()),
        user_batch=args.user_batch, microbatch=bm, topk=k, load_s=load_s, total_s=total, per_user_ms=1e3 * per_user,
        per_batch_median_s=median(per_batch), items_per_s=U * n_items / total,
        extrapolated_data_users_s=per_user * U_all, extrapolated_6040_s=per_user * FULL_ML1M_USERS,
    )


# ----------------------------------------------------------------------------------------------------------------


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

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if on_cuda:
        dev_name = torch.cuda.get_device_name(device)
        tag = args.tag or slug(dev_name)
    else:
        dev_name = f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
        tag = args.tag or f"cpu-{os.cpu_count()}core"
    flops = flop_counts(history, args.dim, args.layers)
    header = dict(
        device=dev_name, device_type=device.type,
        capability=".".join(map(str, torch.cuda.get_device_capability(device))) if on_cuda else None,
        torch=torch.__version__, triton=triton_version, cuda=torch.version.cuda if on_cuda else None,
        python=platform.python_version(), commit=git_commit(), date=datetime.datetime.now().isoformat(timespec="seconds"),
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
    enc = model.encoder
    meth = Methods(torch, enc, history, device, args.naive_batch)
    perm = torch.randperm(args.num_items, generator=torch.Generator().manual_seed(args.seed + 2)).add_(1).to(device)

    # ---- correctness: the methods agree on the candidate outputs at the smallest m ----
    m_check = min(ms)
    cands = perm[:m_check]
    with torch.no_grad(), ctx():
        ref = meth.one_pass(cands).float()
        outs = {"naive": meth.naive(cands).float()}
        cache = meth.prefill()
        for bm in bms:
            outs[f"mfalcon bm={bm}"] = meth.score(cache, cands, bm).float()
        scale = max(1.0, ref.abs().max().item())
        errors = {name: (o - ref).abs().max().item() for name, o in outs.items()}
        tol = TOLERANCE[dtype] * scale
        probe = {
            "naive": backends_ran(lambda: meth.naive(cands[:2])),
            "one-pass": backends_ran(lambda: meth.one_pass(cands[:2])),
            "mfalcon prefill": backends_ran(meth.prefill),
            "mfalcon scoring": backends_ran(lambda: meth.score(cache, cands[:2], bms[0])),
        }
    check = dict(m=m_check, reference="one-pass", max_abs_err=errors, tolerance=tol, ok=max(errors.values()) <= tol)
    header["backends_ran"] = probe
    print(f"check at m={m_check}: max |output - one-pass| " + ", ".join(f"{n} {e:.2e}" for n, e in errors.items())
          + f" (tolerance {tol:.1e})")
    print("backends that ran: " + "; ".join(
        f"{k}: " + ", ".join(f"{op} {'+'.join(b)}" for op, b in v.items()) for k, v in probe.items()))
    assert check["ok"], f"the methods disagree on the candidate outputs at m={m_check}: {errors} > {tol}"

    # ---- timing ----
    rows = []
    R, W = args.repeats, args.warmup

    def add(method, m, times, bm=None, extra=None, peak=None):
        med = median(times)
        row = dict(method=method, bm=bm, m=m, median_s=med, min_s=min(times), times_s=times,
                   cands_per_s=m / med, bound=method_bound(method, m, history, args.dim, args.layers),
                   peak_mib=peak, naive_extrapolated=False)
        row.update(extra or {})
        rows.append(row)
        return row

    with torch.no_grad(), ctx():
        for m in ms:
            cands = perm[:m]
            # naive: estimate the cost from one batch; time a subset of whole batches if m would take too long
            b1 = cands[:min(m, args.naive_batch)]
            t1 = median(timer(lambda b1=b1: meth.naive(b1), 1, W)) / b1.shape[0]
            est = t1 * m * (R + W)
            m_naive = m
            if est > args.max_naive_seconds and m > args.naive_batch:
                nbatch = max(1, int(args.max_naive_seconds / (t1 * args.naive_batch * (R + W))))
                m_naive = min(m, nbatch * args.naive_batch)
            sub = cands[:m_naive]
            base = timer.peak_reset()
            times = timer(lambda sub=sub: meth.naive(sub), R, W if m_naive == m else 0)
            scale_f = m / m_naive
            add("naive", m, [t * scale_f for t in times], peak=timer.peak_mib(base),
                extra=dict(naive_extrapolated=m_naive < m, naive_measured_candidates=m_naive))
            base = timer.peak_reset()
            add("one-pass", m, timer(lambda c=cands: meth.one_pass(c), R, W), peak=timer.peak_mib(base))
            pre = timer(meth.prefill, R, W)
            cache = meth.prefill()
            for bm in bms:
                base = timer.peak_reset()
                add("mfalcon-scoring", m, timer(lambda k=cache, c=cands, b=bm: meth.score(k, c, b), R, W), bm=bm,
                    peak=timer.peak_mib(base), extra=dict(prefill_median_s=median(pre)))
                add("mfalcon-prefill+scoring", m, timer(lambda c=cands, b=bm: meth.score(meth.prefill(), c, b), R, W), bm=bm)
            naive_s = next(r["median_s"] for r in rows if r["method"] == "naive" and r["m"] == m)
            for r in rows:
                if r["m"] == m:
                    r["speedup_vs_naive"] = naive_s / r["median_s"]
                    r["speedup_over_bound"] = r["speedup_vs_naive"] / r["bound"]
            print_table([r for r in rows if r["m"] == m], m)
            cache = None  # free it before the next m

    ranking = None
    if not args.no_rank:
        ranking = rank_catalogue(torch, args, ctx, timer, device, fused, max_seq_len, args.seed)
        if ranking:
            print_ranking(ranking)

    # ---- output ----
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"mfalcon_{tag}{'_quick' if args.quick else ''}"
    result = dict(header=header, check=check, rows=rows, ranking=ranking)
    with open(out_dir / f"{stem}.json", "w") as f:
        json.dump(result, f, indent=1)
    fields = ["method", "bm", "m", "median_s", "min_s", "cands_per_s", "speedup_vs_naive", "bound",
              "speedup_over_bound", "naive_extrapolated", "naive_measured_candidates", "prefill_median_s", "peak_mib"]
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        f.write("# " + json.dumps({k: v for k, v in header.items()}) + "\n")
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
        if ranking:
            f.write("# ranking " + json.dumps(ranking) + "\n")
    print(f"wrote {out_dir / stem}.json and .csv")
    if not args.no_plot:
        plot(rows, out_dir / f"{stem}.png", header)
    return result


def label(r):
    return r["method"] + (f" bm={r['bm']}" if r["bm"] else "")


def print_table(rows, m):
    print(f"\nm = {m} candidates")
    print(f"{'method':34s} {'median':>11s} {'cands/s':>11s} {'speedup':>9s} {'bound':>8s} {'meas/bound':>10s}")
    for r in rows:
        ms = f"{1e3 * r['median_s']:.2f} ms"
        extra = f"  (extrapolated from {r['naive_measured_candidates']})" if r.get("naive_extrapolated") else ""
        print(f"{label(r):34s} {ms:>11s} {r['cands_per_s']:>11.0f} {r['speedup_vs_naive']:>8.1f}x "
              f"{r['bound']:>7.1f}x {r['speedup_over_bound']:>10.2f}{extra}")
    sys.stdout.flush()


def print_ranking(r):
    sub = f" (an evenly spaced subset of {r['data_users']})" if r["subset"] else ""
    print(f"\nwhole-catalogue ranking: {r['users']} users{sub} x {r['items']} items, histories <= {r['max_history']} "
          f"(mean {r['mean_history']:.1f}), user batch {r['user_batch']}, b_m {r['microbatch']}: "
          f"{r['total_s']:.2f} s = {r['per_user_ms']:.2f} ms per user ({r['items_per_s']:.0f} items/s); "
          f"all {r['data_users']} users: {r['extrapolated_data_users_s']:.1f} s; "
          f"{FULL_ML1M_USERS} users: {r['extrapolated_6040_s']:.1f} s")


def plot(rows, path, header):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(7, 5))
    colors = {}  # one color per method and b_m: M-FALCON's scoring solid, prefill + scoring dashed
    for name in dict.fromkeys(label(r) for r in rows):
        pts = sorted((r["m"], r["cands_per_s"]) for r in rows if label(r) == name)
        family = name.replace("-prefill+scoring", "").replace("-scoring", "")
        colors.setdefault(family, f"C{len(colors)}")
        style = "--" if "prefill" in name else "-"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colors[family], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("candidates m")
    ax.set_ylabel("candidates / s")
    ax.set_title(f"M-FALCON, {header['device'][:48]}\n{header['dtype']}, "
                 f"{'fused' if header['fused'] else 'reference ops'}, history {header['history']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
