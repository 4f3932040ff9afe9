"""Recipe experiments: each suspected cause of a quality gap (docs/recipes.md) as one change of ``hstu train``'s
flags, trained for the same epochs from the same seeds, scored by the same test evaluation.

Each (variant, seed) is one ``python -m hstu train`` run in its own folder (``--epochs E --patience E``: every run
trains all E epochs and is tested at its best-validation epoch), ``--jobs`` of them at a time with
``--threads`` torch threads each. Results: ``bench/results/recipe_<data>.{json,md}``: per variant the mean and
spread (min..max over seeds) of the test HR@10 / NDCG@10 / RMSE, the best epoch and the wall time.

    python bench/recipe_experiments.py --data-dir ../shared/data/ml-100k --epochs 40 --seeds 0,1
    python bench/recipe_experiments.py --data-dir DIR --variants default,input-norm --epochs 5 --seeds 0
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import env_header, slug, table

# name -> (flags added to `hstu train`, what it tests). The flags change the defaults of the commit that runs
# them: the results files before the default change (bench/results/recipe_ml-100k*.md, recipe_ml-1m-half-15ep.md)
# ran against the MLP-input defaults that "0.x-default" restores.
VARIANTS = {
    "default": ([], "hstu train's defaults"),
    "0.x-default": (["--input", "mlp", "--no-position-embedding", "--item-init-std", "0", "--time-query", "self",
                     "--time-buckets", "coarse", "--lr-decays", "0"],
                    "the defaults before the recipe change: MLP input, no position embedding, D^-1/2 init, coarse "
                    "time buckets at each token's own time, a constant lr"),
    "input-norm": (["--input-norm"], "LayerNorm before each block's uvqk projection (Meta, rectools)"),
    "fine-time": (["--time-buckets", "fine"], "16 time buckets from 1 s to 1 year instead of 1 h / 1 d / 1 w / 30 d"),
    "norm+fine": (["--input-norm", "--time-buckets", "fine"], "input norm and fine time buckets"),
    "next-time": (["--time-query", "next"], "time bias queried at the predicted event's time (Meta, rectools)"),
    "next+fine": (["--time-query", "next", "--time-buckets", "fine"], "next-event query time and fine buckets"),
    "next+fine+norm": (["--time-query", "next", "--time-buckets", "fine", "--input-norm"], "all three"),
    "rating-0.1": (["--rating-loss-weight", "0.1"], "rating loss weight 0.1 instead of 1"),
    "no-rating": (["--rating-loss-weight", "0"], "no rating loss (retrieval only; the RMSE is of an untrained head)"),
    "batch-128": (["--batch-size", "128"], "128 users per batch (rectools, Meta) instead of 32"),
    "dropout-0.5": (["--dropout", "0.5"], "dropout 0.5 instead of 0.2"),
    "init-0.02": (["--item-init-std", "0.02"], "item and action tables drawn with std 0.02 (Meta) instead of D^-1/2"),
    "pos-emb": (["--position-embedding"], "a learned absolute position embedding, counted from the end (rectools)"),
    "ref-input": (["--input", "sum", "--position-embedding", "--item-init-std", "0.02"],
                  "the references' input: item x sqrt(D) (+ action) + position embedding, small init, no MLP"),
    "neg-position": (["--negatives", "position"], "fresh negatives per labelled position (Meta, rectools)"),
    "neg-512": (["--num-negatives", "512"], "512 negatives per sequence instead of 128"),
    "ref+neg-position": (["--input", "sum", "--position-embedding", "--item-init-std", "0.02", "--negatives",
                          "position"], "the references' input and per-position negatives"),
    "ref+next+fine": (["--input", "sum", "--position-embedding", "--item-init-std", "0.02", "--time-query", "next",
                       "--time-buckets", "fine"], "the references' input and their time bias (next-event query, fine)"),
    "ref+norm": (["--input", "sum", "--position-embedding", "--item-init-std", "0.02", "--input-norm"],
                 "the references' input and their LayerNorm before uvqk"),
}
METRICS = ("HR@10", "NDCG@10", "HR@50", "NDCG@50", "MRR", "RMSE")


def parse_args(argv=None, variants=None, doc=None):
    variants = VARIANTS if variants is None else variants
    p = argparse.ArgumentParser(description=doc or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="MovieLens folder (ratings.dat or u.data)")
    p.add_argument("--variants", default=",".join(variants), help=f"comma-separated, of {', '.join(variants)}")
    p.add_argument("--epochs", type=int, default=40, help="epochs of every run (no early stopping)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--extra", default="", help="flags added to every run, e.g. '--dim 32'")
    p.add_argument("--work-dir", help="run folders (default runs/recipe_<data>)")
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    p.add_argument("--tag", help="results file tag (default: the data folder's name)")
    p.add_argument("--reuse", action="store_true",
                   help="take a run whose folder already holds a finished run of the same flags instead of training it "
                        "again (an interrupted grid continues where it stopped)")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in variants]
    if unknown:
        p.error(f"argument --variants: unknown {', '.join(unknown)} (known: {', '.join(variants)})")
    args.variant_flags = variants
    if args.epochs < 1 or args.jobs < 1 or args.threads < 1:
        p.error("--epochs, --jobs and --threads must be >= 1")
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"argument --seeds: comma-separated integers, got {args.seeds!r}")
    return args


def _flags(cmd):
    """A run's ``hstu train`` flags without its output folder (a moved or linked run folder is the same run)."""
    i = cmd.index("--output-dir")
    return cmd[:i] + cmd[i + 2:]


def run_one(args, work_dir: Path, variant: str, seed: int) -> dict:
    out = work_dir / f"{variant}_seed{seed}"
    cmd = [sys.executable, "-m", "hstu", "train", "--data-dir", args.data_dir, "--output-dir", str(out),
           "--overwrite", "--epochs", str(args.epochs), "--patience", str(args.epochs), "--seed", str(seed),
           "--device", "cpu", "--no-progress", *args.variant_flags[variant][0], *args.extra.split()]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    same = args.reuse and (out / "cmd.json").is_file() and _flags(json.loads((out / "cmd.json").read_text())) == _flags(
        cmd[3:])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()] if same else []
    if any("best_epoch" in r for r in records):
        wall = json.loads((out / "wall.json").read_text())
    else:
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.time() - start
        if proc.returncode != 0:
            raise SystemExit(f"{variant} seed {seed} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        (out / "cmd.json").write_text(json.dumps(cmd[3:]))
        (out / "wall.json").write_text(json.dumps(wall))
        records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    final = next(r for r in reversed(records) if "best_epoch" in r)
    epochs = [r for r in records if "epoch" in r and "seconds" in r]
    row = {"variant": variant, "seed": seed, "best_epoch": final["best_epoch"], "wall_s": round(wall, 1),
           "epoch_s": round(statistics.median(r["seconds"] for r in epochs), 2),
           "valid_NDCG@10": [round(r["valid_NDCG@10"], 4) for r in epochs],
           **{m: final.get(f"test_{m}") for m in METRICS}}
    print(f"  {variant} seed {seed}: test HR@10 {row['HR@10']:.4f} NDCG@10 {row['NDCG@10']:.4f} "
          f"RMSE {row['RMSE']:.3f} (best epoch {row['best_epoch']}, {wall:.0f} s)", flush=True)
    return row


def summarise(rows, variants, flags=None):
    flags = VARIANTS if flags is None else flags
    out = []
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        s = {"variant": v, "change": flags[v][1], "flags": " ".join(flags[v][0]), "seeds": [r["seed"] for r in mine]}
        for m in (*METRICS, "best_epoch", "epoch_s"):
            xs = [r[m] for r in mine if r[m] is not None]
            s[m] = statistics.mean(xs) if xs else None
            s[m + "_range"] = (min(xs), max(xs)) if xs else None
        out.append(s)
    return out


def markdown(summary, header, args, title="Recipe experiments") -> str:
    def cell(s, m, digits=4):
        if s[m] is None:
            return ""
        lo, hi = s[m + "_range"]
        return f"{s[m]:.{digits}f}" + (f" ({lo:.{digits}f}..{hi:.{digits}f})" if len(s["seeds"]) > 1 else "")

    lines = [f"# {title} on {Path(args.data_dir).name}", "",
             f"{args.epochs} epochs per run (best-validation epoch tested), seeds {args.seeds}, extra flags "
             f"`{args.extra or 'none'}`; mean (min..max over seeds). {header['device'].split(' (')[0]}, "
             f"{args.jobs} runs at a time with {args.threads} torch thread(s) each, torch {header['torch']}, "
             f"commit {header['commit']}, {header['date']}.", "",
             "| variant | change | HR@10 | NDCG@10 | HR@50 | NDCG@50 | RMSE | best epoch | s/epoch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['variant']} | {s['change']} | {cell(s, 'HR@10')} | {cell(s, 'NDCG@10')} | "
                     f"{cell(s, 'HR@50')} | {cell(s, 'NDCG@50')} | {cell(s, 'RMSE', 3)} | {s['best_epoch']:.1f} | "
                     f"{s['epoch_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None, variants=None, stem="recipe", title="Recipe experiments", doc=None):
    args = parse_args(argv, variants, doc)
    import torch

    variants = args.variants.split(",")
    tag = args.tag or slug(Path(args.data_dir).name)
    work_dir = Path(args.work_dir or ROOT / "runs" / f"{stem}_{tag}")
    work_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(v, s) for s in args.seed_list for v in variants]
    print(f"{len(jobs)} runs of {args.epochs} epochs on {args.data_dir}, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run_one(args, work_dir, *job), jobs))
    summary = summarise(rows, variants, args.variant_flags)
    header = {**env_header(torch, torch.device("cpu")), "threads_per_run": args.threads, "jobs": args.jobs,
              "benchmark": stem, "data_dir": args.data_dir, "epochs": args.epochs,
              "seeds": args.seed_list, "extra": args.extra}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}_{tag}.json").write_text(json.dumps({"header": header, "runs": rows, "summary": summary},
                                                           indent=1))
    (out_dir / f"{stem}_{tag}.md").write_text(markdown(summary, header, args, title))
    print(table(["variant", "HR@10", "NDCG@10", "RMSE", "best epoch"],
                [[s["variant"], f"{s['HR@10']:.4f}", f"{s['NDCG@10']:.4f}", f"{s['RMSE']:.3f}",
                  f"{s['best_epoch']:.1f}"] for s in summary]))
    print(f"wrote {out_dir / f'{stem}_{tag}.json'} and .md")
    return summary


if __name__ == "__main__":
    main()
