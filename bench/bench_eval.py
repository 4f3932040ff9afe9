"""Benchmark of full-catalogue evaluation: users/second of ``hstu.evaluate.evaluate_model`` (the code ``hstu train``
validates with and ``hstu eval`` runs) on a MovieLens folder, default ``../shared/data/ml-1m-half``.

Model: ``HSTURecommender`` at the training defaults (dim 64, 2 layers, 1 head, max_seq_len 200), eval mode, random
weights (the cost does not depend on them), on ``--device``. Each timed run ranks every item of the catalogue for
each user's ``--split`` target in batches of ``--batch-size`` users, with the seen-item mask and the rank counting
on the model's device; the reported time covers everything (batching on the host, encoder forward, scoring,
masking, ranking, the metrics). Median of ``--repeats`` runs after ``--warmup`` runs; CUDA synchronised around each.

Results: ``bench/results/eval_<device>.{json,csv}`` (header: device, versions, commit, model, data; one row per
batch size).

    python bench/bench_eval.py --device cpu --threads 2 --tag cpu-2core   # the committed CPU run
    python bench/bench_eval.py --device cuda --tag h200                    # on a GPU
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import Timer, env_header, median, slug, write_results

DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "ml-1m-half"
FIELDS = ("batch_size", "users", "median_s", "users_per_s", "runs_s", "peak_mib", "NDCG@10")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="MovieLens folder (ratings.dat or u.data)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--batch-size", default="256", help="comma-separated users per evaluation batch")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-seq-len", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--tag", default=None, help="results file tag (default: the device name)")
    p.add_argument("--note", default=None, help="free text stored in the results (e.g. machine load)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from hstu.config import ModelConfig
    from hstu.evaluate import evaluate_model
    from hstu.model import HSTURecommender
    from hstu.train import load_sequences

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    data, seqs = load_sequences(args.data_dir, "ml-1m")
    torch.manual_seed(0)
    cfg = ModelConfig(num_items=seqs.num_items, dim=args.dim, num_layers=args.layers, max_seq_len=args.max_seq_len)
    model = HSTURecommender(cfg).to(device).eval()
    timer = Timer(torch, device)
    rows = []
    for bs in (int(x) for x in args.batch_size.split(",")):
        metrics = {}

        def run(metrics=metrics, bs=bs):
            metrics.update(evaluate_model(model, seqs, args.split, batch_size=bs, device=device))

        base = timer.peak_reset()
        times = timer(run, args.repeats, args.warmup)
        t = median(times)
        rows.append(dict(batch_size=bs, users=metrics["users"], median_s=round(t, 4),
                         users_per_s=round(metrics["users"] / t, 1), runs_s=[round(x, 4) for x in times],
                         peak_mib=timer.peak_mib(base), **{"NDCG@10": metrics["NDCG@10"]}))
        print(f"batch {bs:>5}: {metrics['users']} users in {t:.3f} s = {metrics['users'] / t:,.1f} users/s")
    header = {**env_header(torch, device), "torch_threads": torch.get_num_threads(),
              "data": {"name": data.name, "dir": str(Path(data.data_dir).name), "users": len(seqs),
                       "items": seqs.num_items, "events": len(seqs.items)},
              "model": {"dim": cfg.dim, "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
                        "max_seq_len": cfg.max_seq_len}, "split": args.split, "repeats": args.repeats,
              "warmup": args.warmup, "note": args.note}
    tag = args.tag or slug(device.type if device.type == "cpu" else torch.cuda.get_device_name(device))
    write_results(args.out, f"eval_{tag}", {"header": header, "rows": rows}, FIELDS)


if __name__ == "__main__":
    main()
