"""``hstu`` command line: train, eval, recommend."""

import argparse
import json
import sys
from dataclasses import fields

from .model import ModelConfig
from .train import TrainConfig

METRIC_ORDER = ("HR@10", "HR@50", "HR@200", "NDCG@10", "NDCG@50", "NDCG@200", "MRR", "RMSE", "MAE")


def _add_data_args(p):
    p.add_argument("--data-dir", help="folder holding ratings.dat (MovieLens-1M) or u.data (MovieLens-100K); "
                   "default: $HSTU_DATA_DIR, else a cache folder filled by downloading from GroupLens")
    p.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "ml-100k"],
                   help="which archive to download when no folder is given (default ml-1m)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")


def _parser():
    parser = argparse.ArgumentParser(prog="hstu", description="HSTU generative recommender on MovieLens")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train on MovieLens and print test HR@10 / NDCG@10")
    _add_data_args(t)
    t.add_argument("--output-dir", default="runs/hstu", help="checkpoints and log.jsonl go here (default runs/hstu)")
    d = TrainConfig()
    for name, kind in (("epochs", int), ("batch_size", int), ("lr", float), ("weight_decay", float),
                       ("rating_weight", float), ("num_targets", int), ("patience", int), ("eval_batch_size", int),
                       ("seed", int)):
        t.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(d, name), help=f"default {getattr(d, name)}")
    m = ModelConfig(num_items=1)
    for name, kind in (("dim", int), ("num_layers", int), ("num_heads", int), ("max_seq_len", int),
                       ("dropout", float), ("max_attn_len", int), ("temperature", float), ("num_negatives", int)):
        t.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(m, name), help=f"default {getattr(m, name)}")
    t.add_argument("--attn-activation", default="silu", choices=["silu", "softmax"])
    t.add_argument("--fused", action="store_true", help="run attention on the fused GPU kernels")
    t.add_argument("--no-amp", action="store_true", help="no bf16 autocast on the GPU")
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    e = sub.add_parser("eval", help="full-ranking metrics of a checkpoint on the test (or validation) targets")
    e.add_argument("--checkpoint", required=True)
    _add_data_args(e)
    e.add_argument("--split", default="test", choices=["test", "valid"])
    e.add_argument("--keep-seen", action="store_true", help="do not filter out items already in the history")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--json", action="store_true", help="print the metrics as one JSON object")

    r = sub.add_parser("recommend", help="top items for one user, with titles: retrieval top-K, then M-FALCON ranking")
    r.add_argument("--checkpoint", required=True)
    _add_data_args(r)
    r.add_argument("--user", type=int, required=True, help="the user's MovieLens UserID")
    r.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    r.add_argument("--keep-seen", action="store_true", help="allow items the user already rated")
    r.add_argument("--retrieve-k", type=int, default=200,
                   help="candidates retrieved over all items before ranking (default 200)")
    r.add_argument("--index", default="auto", choices=["auto", "exact", "faiss"],
                   help="retrieval index: exact matmul, or FAISS inner product (auto: FAISS when installed, on CPU)")
    r.add_argument("--rating-weight", type=float, default=0.5,
                   help="w of the ranking blend (1 - w) * cosine + w * (clamp(rating, 1, 5) - 1) / 4 "
                        "(0: retrieval only, 1: predicted rating only; default 0.5)")
    return parser


def _train(args):
    from .train import train

    model_keys = {f.name for f in fields(ModelConfig)} - {"num_items", "num_actions"}
    model = {k: getattr(args, k) for k in model_keys}
    train_keys = {f.name for f in fields(TrainConfig)} - {"model", "amp", "progress"}
    cfg = TrainConfig(**{k: getattr(args, k) for k in train_keys}, model=model, amp=not args.no_amp,
                      progress=not args.no_progress)
    train(cfg)


def _print_metrics(metrics, title):
    print(title)
    for key in METRIC_ORDER:
        if key in metrics:
            print(f"  {key:<9} {metrics[key]:.4f}")


def _eval(args):
    from .serving import load_for_inference
    from .evaluate import evaluate_model, evaluate_popularity

    model, data, seqs, device = load_for_inference(args.checkpoint, args.data_dir, args.dataset, args.device)
    kw = dict(batch_size=args.batch_size, device=device, filter_seen=not args.keep_seen, progress=sys.stderr.isatty())
    metrics = evaluate_model(model, seqs, args.split, **kw)
    pop = evaluate_popularity(seqs, args.split, max_seq_len=model.config.max_seq_len, **kw)
    if args.json:
        print(json.dumps({**metrics, "popularity": pop}))
        return
    _print_metrics(metrics, f"HSTU on {data.name} ({metrics['users']} users, {args.split} targets):")
    _print_metrics(pop, "most-popular baseline:")


def _recommend(args):
    from .serving import Ranker, load_for_inference, recommend

    model, data, _, device = load_for_inference(args.checkpoint, args.data_dir, args.dataset, args.device)
    ranker = Ranker(model, index=args.index, retrieve_k=args.retrieve_k, rating_weight=args.rating_weight,
                    device=device)
    rows = recommend(model, data, args.user, args.k, exclude_seen=not args.keep_seen, ranker=ranker)
    print(f"top {len(rows)} for user {args.user}: retrieval top-{args.retrieve_k} ({ranker.index}), ranked by "
          f"final = (1 - w) * cosine + w * (clamp(rating, 1, 5) - 1) / 4, w = {ranker.rating_weight:g}")
    print(f"{'rank':>4}  {'retrieval':>9}  {'rating':>6}  {'final':>6}  title")
    for i, row in enumerate(rows, 1):
        print(f"{i:>4}  {row['score']:>9.3f}  {row['rating']:>6.2f}  {row['final']:>6.3f}  {row['title']}")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"train": _train, "eval": _eval, "recommend": _recommend}[args.command](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"hstu {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
