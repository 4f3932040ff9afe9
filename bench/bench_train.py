"""Benchmark of training speed: seconds per epoch (train + validation) of ``hstu train`` at its defaults, before and
after the CPU speed-ups, in one run, with the metrics of each (before and plan must agree: same model, same
batches; after draws other dropout masks, so its metrics differ by that noise only).

Variants (each a full ``hstu.train.train`` run of ``--epochs`` epochs from the same seed, in this order):

    before   every block calls the op (``hstu_attention(backend="torch")``: mask, positions, time buckets
             recomputed per block and direction, over the whole padded square); validation batches in user
             order; ``F.dropout``; the retrieval loss's ``torch.logsumexp``
    plan     one ``hstu.attention_plan.AttentionPlan`` per batch shared by the blocks (segments longest first,
             blocks of query rows over the lower triangle only, the mask folded into an int32 table index, a
             hand-written backward: ``hstu.blocked_attention``); validation batches of users of similar length;
             the retrieval loss's bounded logsumexp (``hstu.products_lse``)
    after    plan + ``hstu.dropout``'s integer-draw CPU mask instead of ``bernoulli_`` + the last block
             computing only the rows the losses read (``hstu.train.SKIP_UNUSED_ROWS``; the defaults of
             ``hstu train``)

The epoch time is the training loop's own ``seconds`` (its log.jsonl): batching, forward, backward, optimizer,
validation. Median over the epochs after the first (which pays for allocator warm-up). Results:
``bench/results/bench_train_<tag>.{json,csv}`` (header: device, versions, commit, data, settings, machine load).

    python bench/bench_train.py --threads 2 --epochs 5 --tag cpu-2core   # the committed CPU run (ml-1m-half)
    python bench/bench_train.py --data-dir DIR --epochs 2 --variants after
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import env_header, median, table, write_results

DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "ml-1m-half"
VARIANTS = ("before", "plan", "after")
FIELDS = ("variant", "epochs", "median_epoch_s", "min_epoch_s", "epoch_s", "valid_NDCG@10", "valid_HR@10",
          "valid_RMSE", "loss")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="MovieLens folder (ratings.dat or u.data)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per variant (>= 1)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-len", type=int, default=200)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tag", default=None, help="results file tag (default: the device)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        p.error(f"--variants: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(VARIANTS)}")
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    return args


def run_variant(name, args, work_dir):
    """Train one variant; returns its epoch log records."""
    from hstu import dropout, evaluate, products_lse
    from hstu import train as train_module
    from hstu.encoder import HSTUEncoder
    from hstu.train import TrainConfig, train

    HSTUEncoder.use_plan = evaluate.SORT_BY_LENGTH = products_lse.FAST = name != "before"
    dropout.FAST_CPU = train_module.SKIP_UNUSED_ROWS = name == "after"
    out_dir = Path(work_dir) / name
    cfg = TrainConfig(data_dir=args.data_dir, output_dir=str(out_dir), epochs=args.epochs, batch_size=args.batch_size,
                      device=args.device, progress=False, patience=args.epochs + 1,
                      model={"max_seq_len": args.max_seq_len})
    try:
        train(cfg, log=lambda msg: print(f"  [{name}] {msg}", flush=True))
    finally:
        HSTUEncoder.use_plan = evaluate.SORT_BY_LENGTH = dropout.FAST_CPU = train_module.SKIP_UNUSED_ROWS = True
        products_lse.FAST = True
    lines = [json.loads(x) for x in (out_dir / "log.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in lines if "epoch" in r and "seconds" in r]


def summarise(name, records):
    secs = [r["seconds"] for r in records]
    timed = secs[1:] or secs
    last = records[-1]
    return {
        "variant": name, "epochs": len(records), "median_epoch_s": round(median(timed), 2),
        "min_epoch_s": round(min(timed), 2), "epoch_s": secs, "valid_NDCG@10": round(last["valid_NDCG@10"], 4),
        "valid_HR@10": round(last["valid_HR@10"], 4), "valid_RMSE": round(last["valid_RMSE"], 4),
        "loss": round(last["loss"], 4),
    }


def main(argv=None):
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as work:
        for name in args.variants:
            print(f"{name}: {args.epochs} epochs on {args.data_dir}", flush=True)
            rows.append(summarise(name, run_variant(name, args, work)))
    header = {
        **env_header(torch, device), "benchmark": "train", "data_dir": str(args.data_dir), "epochs": args.epochs,
        "batch_size": args.batch_size, "max_seq_len": args.max_seq_len, "threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    print(table(["variant", "median s/epoch", "min s/epoch", "valid NDCG@10", "valid HR@10", "RMSE"],
                [[r["variant"], r["median_epoch_s"], r["min_epoch_s"], r["valid_NDCG@10"], r["valid_HR@10"],
                  r["valid_RMSE"]] for r in rows]))
    for r in rows[1:]:
        print(f"{r['variant']}: {rows[0]['median_epoch_s'] / r['median_epoch_s']:.2f}x per epoch over {rows[0]['variant']}")
    tag = args.tag or device.type
    write_results(args.out, f"bench_train_{tag}", {"header": header, "rows": rows}, FIELDS)
    return rows


if __name__ == "__main__":
    main()
