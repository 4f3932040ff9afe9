"""``hstu`` command line: train, eval, recommend.

Imports torch only inside the commands, so ``hstu --help`` answers at once. Flags are checked by argparse
(types and ranges from ``hstu.config``); library errors name config fields, and ``main`` names the flag instead.
"""

import argparse
import json
import sys

from .config import (
    ATTN_BIASES, INPUT_MODES, MODEL_FIELDS, MODEL_RANGES, NEGATIVE_DRAWS, PRESETS, RESUMABLE, TIME_BUCKETS, TIME_QUERIES,
    TRAIN_RANGES, ArgumentError, ModelConfig, Range, TrainConfig,
)

METRIC_ORDER = ("HR@10", "HR@50", "HR@200", "NDCG@10", "NDCG@50", "NDCG@200", "MRR", "RMSE", "MAE")
EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130

TRAIN_HELP = {
    "epochs": "most epochs to train",
    "batch_size": "users per training batch (under torchrun: the global batch, split across the ranks)",
    "lr": "AdamW learning rate (the starting one, see --lr-decay)",
    "lr_decay": "factor applied to the lr after --lr-patience epochs without a better validation NDCG@10",
    "lr_patience": "epochs without a better validation NDCG@10 before the lr decays (the count then restarts)",
    "lr_decays": "most lr decays before --patience such epochs stop the run (0: a constant lr)",
    "weight_decay": "AdamW weight decay",
    "rating_loss_weight": "weight of the rating loss (MSE of the rating head) added to the retrieval loss",
    "num_targets": "rating targets per training sequence",
    "patience": "stop after this many epochs without a better validation NDCG@10",
    "eval_batch_size": "users per evaluation batch",
    "seed": "seed of the initial weights, the batch order and the negatives",
}
MODEL_HELP = {
    "dim": "model width D",
    "num_layers": "HSTU blocks",
    "num_heads": "attention heads (must divide --dim)",
    "max_seq_len": "longest model input: up to max_seq_len - 1 history events and a target",
    "dropout": "dropout rate",
    "max_attn_len": "local attention window in positions (0: none)",
    "temperature": "retrieval temperature: logits are cosine / temperature",
    "num_negatives": "uniform negatives of the sampled-softmax retrieval loss, per sequence or per position "
                     "(--negatives)",
    "item_init_std": "std of the normal init of the item and action embeddings (0: D^-1/2)",
}
# config fields (as library errors name them) -> the flag of each command
FLAGS = {
    "train": {"data_dir": "--data-dir", "dataset": "--dataset", "device": "--device", "output_dir": "--output-dir",
              "attn_activation": "--attn-activation", "fused": "--fused", "input_norm": "--input-norm",
              "time_buckets": "--time-buckets", "time_query": "--time-query",
              "attn_bias": "--attn-bias", "use_actions": "--no-actions", "input_mode": "--input",
              "position_embedding": "--position-embedding", "negatives": "--negatives", "amp": "--no-amp", "resume": "--resume",
              "overwrite": "--overwrite", "skip_nonfinite": "--skip-nonfinite",
              **{name: "--" + name.replace("_", "-") for name in (*TRAIN_RANGES, *MODEL_RANGES)}},
    "eval": {"data_dir": "--data-dir", "dataset": "--dataset", "device": "--device", "batch_size": "--batch-size",
             "checkpoint": "--checkpoint"},
    "recommend": {"data_dir": "--data-dir", "dataset": "--dataset", "device": "--device", "user_id": "--user",
                  "k": "-k", "retrieve_k": "--retrieve-k", "rating_weight": "--blend-weight",
                  "checkpoint": "--checkpoint", "index": "--index"},
}


def _resumable_flags() -> str:
    """The flags of ``RESUMABLE``, as help and errors list them."""
    names = [FLAGS["train"][k] for k in RESUMABLE]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _ranged(allowed: Range):
    """An argparse type: the text as a value in ``allowed``, or an error saying which values it takes."""

    def parse(text):
        try:
            return allowed.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = allowed.kind.__name__
    return parse


def _device(text: str) -> str:
    from .train import resolve_device

    try:
        resolve_device(text)
    except ArgumentError as err:
        raise argparse.ArgumentTypeError(err.message) from None
    return text


def _output_dir(text: str) -> str:
    from pathlib import Path

    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return text


def _add_data_args(p):
    p.add_argument("--data-dir", help="folder holding ratings.dat (MovieLens-1M) or u.data (MovieLens-100K); "
                   "default: $HSTU_DATA_DIR, else a cache folder filled by downloading from GroupLens")
    p.add_argument("--dataset", choices=["ml-1m", "ml-100k"],
                   help="which archive to download when no folder is given (default ml-1m)")
    p.add_argument("--device", type=_device, help="auto (CUDA when present), cpu, cuda, cuda:1, mps (default auto)")


def _train_parser(sub):
    t = sub.add_parser("train", help="train on MovieLens and print test HR@10 / NDCG@10")
    _add_data_args(t)
    d, m = TrainConfig(), ModelConfig(num_items=1)
    t.add_argument("--output-dir", type=_output_dir,
                   help=f"checkpoints and log.jsonl go here, one run per folder (default {d.output_dir})")
    # every default is None, so that "given" and "not given" differ: a resume takes the saved value of the
    # flags not given, and a new run the dataclass defaults shown in the help
    for ranges, helps, config in ((TRAIN_RANGES, TRAIN_HELP, d), (MODEL_RANGES, MODEL_HELP, m)):
        for name, allowed in ranges.items():
            t.add_argument("--" + name.replace("_", "-"), type=_ranged(allowed),
                           help=f"{helps[name]}; {allowed.describe()} (default {getattr(config, name)})")
    t.add_argument("--preset", choices=list(PRESETS),
                   help="model size: " + "; ".join(f"{n}: {', '.join(f'{k}={v}' for k, v in m.items()) or 'the defaults'}"
                                                   for n, m in PRESETS.items()) + " (flags given override it)")
    t.add_argument("--attn-activation", choices=["silu", "softmax"], help="attention nonlinearity (default silu)")
    t.add_argument("--fused", action="store_true", default=None, help="run attention on the fused GPU kernels")
    t.add_argument("--input-norm", action="store_true", default=None,
                   help="LayerNorm each block's input before its projection (as Meta's and rectools' HSTU)")
    t.add_argument("--time-buckets", choices=list(TIME_BUCKETS),
                   help="time-gap buckets of the attention bias: coarse (1 h, 1 d, 1 w, 30 d) or fine (1 s .. 1 year, "
                        f"16 boundaries) (default {m.time_buckets})")
    t.add_argument("--attn-bias", choices=list(ATTN_BIASES),
                   help="relative attention bias: both (position and time), position, time or none (default both)")
    t.add_argument("--no-actions", dest="use_actions", action="store_false", default=None,
                   help="items only: the input does not see the ratings' actions (the SASRec-like ablation)")
    t.add_argument("--time-query", choices=list(TIME_QUERIES),
                   help="query time of the time bias: self (each event's own) or next (the time of the event it "
                        f"predicts; the target's at evaluation) (default {m.time_query})")
    t.add_argument("--input", dest="input_mode", choices=list(INPUT_MODES),
                   help="input token: mlp (MLP of item and action embeddings) or sum (item x sqrt(D) + action, as "
                        f"rectools and Meta feed items) (default {m.input_mode})")
    t.add_argument("--position-embedding", action=argparse.BooleanOptionalAction, default=None,
                   help="a learned absolute position embedding, counted back from the last history event, added to "
                        f"the input (default {'on' if m.position_embedding else 'off'})")
    t.add_argument("--negatives", choices=list(NEGATIVE_DRAWS),
                   help=f"retrieval negatives drawn once per sequence or afresh per position (default {m.negatives})")
    t.add_argument("--no-amp", action="store_true", help="no bf16 autocast on the GPU")
    t.add_argument("--resume", action="store_true",
                   help=f"continue the run in OUTPUT_DIR from its last.pt; only {_resumable_flags()} may change")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in OUTPUT_DIR")
    t.add_argument("--skip-nonfinite", action="store_true", default=None,
                   help="skip training steps whose loss or gradients are not finite (default: stop training)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars (they are drawn on a terminal only)")


def _parser():
    parser = argparse.ArgumentParser(prog="hstu", description="HSTU generative recommender on MovieLens")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)

    e = sub.add_parser("eval", help="full-ranking metrics of a checkpoint on the test (or validation) targets")
    e.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by hstu train")
    _add_data_args(e)
    e.add_argument("--split", default="test", choices=["test", "valid"],
                   help="rank each user's last event (test, the default) or second-to-last (valid)")
    e.add_argument("--keep-seen", action="store_true", help="do not filter out items already in the history")
    e.add_argument("--batch-size", type=_ranged(Range(int, 1)), default=64, metavar="N",
                   help="users per evaluation batch; an integer >= 1 (default 64)")
    e.add_argument("--json", action="store_true", help="print the metrics as one JSON object")

    r = sub.add_parser("recommend", help="top items for one user, with titles: retrieval top-K, then M-FALCON ranking")
    r.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by hstu train")
    _add_data_args(r)
    r.add_argument("--user", type=int, required=True, help="the user's MovieLens UserID")
    r.add_argument("-k", type=_ranged(Range(int, 1)), default=10, help="how many items; an integer >= 1 (default 10)")
    r.add_argument("--keep-seen", action="store_true", help="allow items the user already rated")
    r.add_argument("--retrieve-k", type=_ranged(Range(int, 1)), default=200, metavar="K",
                   help="candidates retrieved over all items before ranking; an integer >= 1 (default 200)")
    r.add_argument("--index", default="auto", choices=["auto", "exact", "faiss"],
                   help="retrieval index: exact matmul, or FAISS inner product (auto: FAISS when installed, on CPU)")
    r.add_argument("--blend-weight", type=_ranged(Range(float, 0, 1)), default=0.5, metavar="W",
                   help="w of the ranking blend (1 - w) * cosine + w * (clamp(rating, 1, 5) - 1) / 4 "
                        "(0: retrieval only, 1: predicted rating only; default 0.5)")
    return parser


def _train_config(args) -> TrainConfig:
    """The run's config: the flags given, over the saved run's config (``--resume``) or the defaults."""
    given = {name: getattr(args, name) for name in (*TRAIN_RANGES, "data_dir", "dataset", "device", "skip_nonfinite")
             if getattr(args, name) is not None}
    model = {**PRESETS[args.preset or "default"],
             **{name: getattr(args, name) for name in MODEL_FIELDS if getattr(args, name) is not None}}
    if args.no_amp:
        given["amp"] = False
    # bars on a terminal only: piped into a log, they are noise
    given["progress"] = not args.no_progress and sys.stderr.isatty()
    output_dir = args.output_dir or TrainConfig.output_dir
    if args.resume:
        from .train import resume_config

        if args.overwrite:
            raise ArgumentError("overwrite", "cannot go with --resume: one continues the run, the other replaces it")
        return resume_config(output_dir, model=model, **given)
    return TrainConfig(**given, output_dir=output_dir, overwrite=args.overwrite, model=model)


def _train(args):
    from .train import train

    train(_train_config(args))


def _print_metrics(metrics, title):
    print(title)
    for key in METRIC_ORDER:
        if key in metrics:
            print(f"  {key:<9} {metrics[key]:.4f}")


def _eval(args):
    from .evaluate import evaluate_model, evaluate_popularity
    from .serving import load_for_inference

    model, data, seqs, device = load_for_inference(args.checkpoint, args.data_dir, args.dataset or "ml-1m",
                                                   args.device or "auto")
    kw = dict(batch_size=args.batch_size, device=device, filter_seen=not args.keep_seen, progress=sys.stderr.isatty())
    metrics = evaluate_model(model, seqs, args.split, **kw)
    if metrics["non_finite_users"]:
        print(f"hstu eval: warning: the model gave non-finite scores for {metrics['non_finite_users']} of "
              f"{metrics['users']} users; their targets rank last", file=sys.stderr)
    pop = evaluate_popularity(seqs, args.split, max_seq_len=model.config.max_seq_len, **kw)
    if args.json:
        print(json.dumps({**metrics, "popularity": pop}))
        return
    _print_metrics(metrics, f"HSTU on {data.name} ({metrics['users']} users, {args.split} targets):")
    _print_metrics(pop, "most-popular baseline:")


def _recommend(args):
    if args.k > args.retrieve_k:
        raise ArgumentError("k", f"{args.k} is more than --retrieve-k {args.retrieve_k}: raise --retrieve-k")
    from .serving import Ranker, load_for_inference, recommend

    model, data, _, device = load_for_inference(args.checkpoint, args.data_dir, args.dataset or "ml-1m",
                                                args.device or "auto")
    ranker = Ranker(model, index=args.index, retrieve_k=args.retrieve_k, rating_weight=args.blend_weight,
                    device=device)
    rows = recommend(model, data, args.user, args.k, exclude_seen=not args.keep_seen, ranker=ranker)
    note = "" if len(rows) == args.k else f" (only {len(rows)} items left to recommend)"
    print(f"top {len(rows)} for user {args.user}{note}: retrieval top-{args.retrieve_k} ({ranker.index}), ranked by "
          f"final = (1 - w) * cosine + w * (clamp(rating, 1, 5) - 1) / 4, w = {ranker.rating_weight:g}")
    print(f"{'rank':>4}  {'retrieval':>9}  {'rating':>6}  {'final':>6}  title")
    for i, row in enumerate(rows, 1):
        print(f"{i:>4}  {row['score']:>9.3f}  {row['rating']:>6.2f}  {row['final']:>6.3f}  {row['title']}")


def _flag(command: str, name: str) -> str | None:
    return FLAGS.get(command, {}).get(name)


def _resume_hint(err) -> str:
    return f"resume with: hstu train --output-dir {err.output_dir} --resume"


def _run(args) -> int:
    """Run the command; translate what the library raises into a message that names flags, and an exit code."""
    from .checkpoint import CheckpointError

    command = args.command
    say = lambda text: print(f"hstu {command}: {text}", file=sys.stderr)  # noqa: E731
    try:
        {"train": _train, "eval": _eval, "recommend": _recommend}[command](args)
    except KeyboardInterrupt as err:
        if command == "train" and hasattr(err, "output_dir"):
            say(f"{err}")
            if err.checkpoint is not None:
                say(_resume_hint(err))
        else:
            say("interrupted")
        return EXIT_INTERRUPTED
    except ArgumentError as err:
        from .run_folder import RunExistsError

        if isinstance(err, RunExistsError):
            say(f"error: {err.folder} already holds a run ({', '.join(err.found)}): pass --resume to continue it, "
                "--overwrite to replace it, or another --output-dir")
        elif _flag(command, err.name):
            say(f"error: argument {_flag(command, err.name)}: {err.message}")
        else:
            say(f"error: {err}")
        return EXIT_USAGE
    except CheckpointError as err:
        say(f"error: {err}")
        return EXIT_USAGE
    except ValueError as err:
        if command == "train":
            from .train import ResumeMismatch

            if isinstance(err, ResumeMismatch):
                lines = [f"  {_flag(command, k) or k}: {saved!r} in the saved run, {asked!r} now"
                         for k, (saved, asked) in err.differences.items()]
                say(f"error: cannot resume {err.checkpoint}: these differ from the saved run:\n" + "\n".join(lines)
                    + f"\nonly {_resumable_flags()} may change on --resume; start a new run (another --output-dir) "
                    "otherwise")
                return EXIT_USAGE
        say(f"error: {err}")
        return EXIT_USAGE
    except FileNotFoundError as err:
        say(f"error: {err}")
        return EXIT_USAGE
    except OSError as err:
        say(f"error: {err.filename}: {err.strerror}" if err.filename else f"error: {err}")
        return EXIT_FAILED
    except RuntimeError as err:
        from .distributed import RankLost
        from .train import TrainingDiverged

        if isinstance(err, RankLost):
            say(f"error: {err}")
            return EXIT_FAILED
        if not isinstance(err, TrainingDiverged):
            raise
        say(f"error: {err}")
        say("try a lower --lr, or --skip-nonfinite to skip such steps")
        return EXIT_FAILED
    return 0


def main(argv=None) -> int:
    return _run(_parser().parse_args(argv))
