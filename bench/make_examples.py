"""Regenerate docs/examples.md: what a checkpoint recommends to a few fixed MovieLens users, beside rectools'
HSTU.

For each user: their last ``--history`` ratings (title, rating, date, oldest first), then our top ``-k`` as
``hstu recommend`` ranks them (the serving ``Ranker``: retrieval top-K over the catalogue, M-FALCON scoring of
the candidates, sorted by the blend of retrieval score and predicted rating; items already rated excluded),
beside the top ``-k`` of rectools' HSTU read from the ``topk_<model>.npz`` lists that bench/rectools_fit.py
writes under ``WORK/fits`` (bench/compare_rectools.py runs it).

rectools' lists are fitted on our split's train events, which leave out each user's last rating (the test
target), and are recommended at that rating's time; ours are ranked after the whole history. So a rectools
list may hold the user's last rated title (a hit on the test target), which ours, excluding what was rated,
never does.

    python bench/make_examples.py --checkpoint runs/hstu/best.pt --data-dir DIR [--users 1,2,3]
        [--rectools-fits WORK/fits] [--out docs/examples.md]
"""

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import git_commit

DEFAULT_USERS = 3
HELD_OUT_MARK = "(last rated, held out)"
# flag, args attribute, default: the options the regenerating command names only when changed
TUNING = (("-k", "k", 10), ("--history", "history", 10), ("--retrieve-k", "retrieve_k", 200),
          ("--blend-weight", "blend_weight", 0.5), ("--index", "index", "exact"),
          ("--device", "device", "cpu"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by hstu train")
    p.add_argument("--data-dir", help="the MovieLens folder (default: the one the checkpoint was trained on)")
    p.add_argument("--users", help=f"comma-separated MovieLens UserIDs (default: the first {DEFAULT_USERS} "
                   "by id that have the 3 ratings the split needs)")
    p.add_argument("--rectools-fits", help="WORK/fits of bench/compare_rectools.py (topk_<model>.npz)")
    p.add_argument("--rectools-model", default="hstu", help="which rectools list to show (default hstu)")
    p.add_argument("--out", default=str(ROOT / "docs" / "examples.md"))
    p.add_argument("-k", type=int, default=10, help="recommendations per user (default 10)")
    p.add_argument("--history", type=int, default=10, help="last ratings shown per user (default 10)")
    p.add_argument("--retrieve-k", type=int, default=200,
                   help="candidates retrieved before ranking (default 200)")
    p.add_argument("--blend-weight", type=float, default=0.5, help="w of the ranking blend (default 0.5)")
    p.add_argument("--index", default="exact", choices=["auto", "exact", "faiss"],
                   help="retrieval index (default exact: the file does not depend on FAISS being installed)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.k < 1 or args.history < 1 or args.retrieve_k < args.k:
        p.error("need -k >= 1, --history >= 1 and --retrieve-k >= -k")
    if args.users is not None:
        try:
            args.users = [int(u) for u in args.users.split(",") if u.strip()]
        except ValueError:
            p.error(f"--users takes comma-separated integers, got {args.users!r}")
        if not args.users:
            p.error("--users names no user")
    return args


# ------------------------------------------------------------------------------------------------------------
# the rows


def last_ratings(data, user_id, n):
    """User ``user_id``'s last ``n`` ratings, oldest first: ``[{"item", "title", "rating", "date"}]`` (dense
    item ids; dates UTC)."""
    from hstu.serving import user_history

    items, _, stamps = user_history(data, user_id)  # raises for an unknown user
    seqs = data.sequences
    pos = int(seqs.user_ids.searchsorted(user_id))
    ratings = seqs.ratings[seqs.offsets[pos]:seqs.offsets[pos + 1]]
    utc = datetime.timezone.utc
    return [{"item": int(i), "title": data.titles.get(int(i), f"item {i}"), "rating": int(r),
             "date": datetime.datetime.fromtimestamp(int(t), utc).strftime("%Y-%m-%d %H:%M")}
            for i, r, t in zip(items[-n:], ratings[-n:], stamps[-n:])]


def read_rectools_lists(fits_dir, model, data):
    """``({raw user id: [dense item ids, best first]}, fit info)`` from ``topk_<model>.npz`` (``users``: raw
    ids, ``items [U, K]``: our dense ids, -1 past a shorter list) and ``fit_<model>.json``. ValueError when
    the lists cannot be of ``data`` (an item past its catalogue, or a split of another catalogue size)."""
    import numpy as np

    fits_dir = Path(fits_dir)
    path = fits_dir / f"topk_{model}.npz"
    if not path.is_file():
        found = ", ".join(p.stem[len("topk_"):] for p in sorted(fits_dir.glob("topk_*.npz"))) or "none"
        raise FileNotFoundError(f"no {path} (lists there: {found}); bench/compare_rectools.py writes them")
    lists = np.load(path)
    users, items = lists["users"], lists["items"]
    split = fits_dir.parent / "split" / "split.json"
    if split.is_file():
        num_items = json.loads(split.read_text()).get("num_items")
        if num_items is not None and num_items != data.num_items:
            raise ValueError(f"{split} has {num_items} items, {data.data_dir} {data.num_items}: the lists in "
                             f"{fits_dir} are of other data")
    if items.size and int(items.max()) > data.num_items:
        raise ValueError(f"{path} names item {int(items.max())}, past the {data.num_items} items of "
                         f"{data.data_dir}")
    info_path = fits_dir / f"fit_{model}.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return {int(u): [int(i) for i in row if i > 0] for u, row in zip(users, items)}, info


# ------------------------------------------------------------------------------------------------------------
# the markdown


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def user_section(data, user_id, history, ours, total_ratings, k, rectools=None, rectools_name=None):
    """One user's markdown lines: the last ratings, then our top ``k`` beside rectools' (``rectools``: its
    dense ids, or None for no column)."""
    last_item = history[-1]["item"] if history else None
    lines = [f"## User {user_id}", "",
             f"Last {len(history)} of their {total_ratings} ratings, oldest first:", "",
             "| # | date (UTC) | rating | title |", "|---|---|---|---|"]
    lines += [f"| {i} | {h['date']} | {h['rating']} | {cell(h['title'])} |" for i, h in enumerate(history, 1)]
    note = f" (only {len(ours)} unrated items left)" if len(ours) < k else ""
    lines += ["", f"Top {len(ours)} recommendations{note}:", ""]
    head, rule = "| rank | ours: title | retrieval | rating | final |", "|---|---|---|---|---|"
    if rectools is not None:
        head, rule = head + f" rectools {rectools_name}: title |", rule + "---|"
    lines += [head, rule]
    for r in range(max(len(ours), len(rectools or []))):
        row = f"| {r + 1} | "
        if r < len(ours):
            o = ours[r]
            row += f"{cell(o['title'])} | {o['score']:.3f} | {o['rating']:.2f} | {o['final']:.3f} |"
        else:
            row += " | | | |"
        if rectools is not None:
            if r < len(rectools):
                mark = f" {HELD_OUT_MARK}" if rectools[r] == last_item else ""
                row += f" {cell(data.titles.get(rectools[r], f'item {rectools[r]}'))}{mark} |"
            else:
                row += " |"
        lines.append(row)
    if rectools is not None and last_item in rectools:
        lines += ["", f"{HELD_OUT_MARK}: the user's last rated title, which rectools' fit held out (its test "
                  "target)."]
    lines.append("")
    return lines


def command_line(args, data_dir) -> str:
    """The command that writes the file again (the users resolved: a changed default does not move them)."""
    parts = ["python", "bench/make_examples.py", "--checkpoint", str(args.checkpoint),
             "--data-dir", str(data_dir), "--users", ",".join(map(str, args.users))]
    if args.rectools_fits:
        parts += ["--rectools-fits", str(args.rectools_fits)]
        if args.rectools_model != "hstu":
            parts += ["--rectools-model", args.rectools_model]
    parts += [x for flag, name, default in TUNING if getattr(args, name) != default
              for x in (flag, str(getattr(args, name)))]
    parts += ["--out", str(args.out)]
    return " ".join(shlex.quote(p) for p in parts)


def header_lines(args, ckpt, data, data_dir, model, ranker, rectools_info):
    state, cfg = ckpt.get("state", {}), ckpt["model_config"]
    shape = ", ".join(f"{key} {cfg[key]}" for key in ("dim", "num_layers", "num_heads", "max_seq_len",
                                                     "time_buckets", "time_query") if key in cfg)
    lines = [
        "# Example recommendations", "",
        f"Generated by `bench/make_examples.py` (do not edit by hand) at commit {git_commit() or 'unknown'} "
        f"from checkpoint `{args.checkpoint}` (epoch {state.get('epoch', '?')}, best epoch "
        f"{state.get('best_epoch', '?')}; {shape}) on `{data_dir}` ({data.name}, {len(data.user_ids)} users, "
        f"{data.num_items} items).", "",
        "Regenerate with:", "", "```", command_line(args, data_dir), "```", "",
        f"Ours: `hstu recommend`'s ranking (the serving `Ranker`): retrieval top-{args.retrieve_k} "
        f"({ranker.index} index) over the catalogue after the user's whole history (the model reads its last "
        f"{model.config.max_seq_len - 1} ratings), the candidates scored by M-FALCON and sorted by final = "
        f"(1 - w) * cosine + w * (clamp(rating, 1, 5) - 1) / 4, w = {ranker.rating_weight:g}; retrieval is "
        "the logit cosine / temperature, rating the predicted rating; items the user rated are excluded.", "",
    ]
    if rectools_info is not None:
        epochs = f", {rectools_info['epochs']} epochs" if rectools_info.get("epochs") is not None else ""
        lines += [f"rectools {args.rectools_model}: the top {args.k} of its lists in "
                  f"`{args.rectools_fits}` (bench/rectools_fit.py{epochs}), fitted on our split's train "
                  "events, which leave out each user's last rating, and recommended at that rating's time: a "
                  f"list may hold the user's last rated title, marked {HELD_OUT_MARK}, which ours, ranked "
                  "after the whole history, excludes.", ""]
    else:
        lines += ["rectools' HSTU column: not included. To add it, run `python bench/compare_rectools.py "
                  f"--data-dir {data_dir}` (it writes its lists to WORK/fits, by default "
                  "runs/compare_rectools_<data>/fits) and pass `--rectools-fits WORK/fits`.", ""]
    return lines


def main(argv=None) -> str:
    """Write ``--out``; returns its text."""
    args = parse_args(argv)
    from hstu.checkpoint import load_checkpoint
    from hstu.serving import Ranker, load_for_inference, recommend

    model, data, seqs, device = load_for_inference(args.checkpoint, args.data_dir, "ml-1m", args.device)
    ckpt = load_checkpoint(args.checkpoint, require=("model_config",))
    data_dir = args.data_dir or ckpt.get("data_dir")
    if args.users is None:
        args.users = [int(u) for u in seqs.user_ids[:DEFAULT_USERS]]
    known = set(data.user_ids.tolist())
    unknown = [u for u in args.users if u not in known]
    if unknown:
        raise SystemExit(f"--users: no user {', '.join(map(str, unknown))} in {data.data_dir} "
                         f"(ids {data.user_ids[0]}..{data.user_ids[-1]})")
    rectools, info = None, None
    if args.rectools_fits:
        rectools, info = read_rectools_lists(args.rectools_fits, args.rectools_model, data)
        missing = [u for u in args.users if u not in rectools]
        if missing:
            raise SystemExit(f"no rectools list for user(s) {', '.join(map(str, missing))} in "
                             f"{args.rectools_fits}/topk_{args.rectools_model}.npz")
    ranker = Ranker(model, index=args.index, retrieve_k=args.retrieve_k, rating_weight=args.blend_weight,
                    device=device)

    lines = header_lines(args, ckpt, data, data_dir, model, ranker, info)
    lengths = data.sequences.lengths()
    for user in args.users:
        history = last_ratings(data, user, args.history)
        total = int(lengths[int(data.user_ids.searchsorted(user))])
        ours = recommend(model, data, user, args.k, ranker=ranker)
        theirs = None if rectools is None else rectools[user][:args.k]
        lines += user_section(data, user, history, ours, total, args.k, theirs, args.rectools_model)
    text = "\n".join(lines)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return text


if __name__ == "__main__":
    main()
