"""Our HSTU against rectools' HSTU and SASRec on our own split, scored by our own metric code.

Three steps, in two Python environments:

1. here (the project's Python): load the data with ``hstu.data`` and write our leave-one-out split to
   ``WORK/split`` (bench/rectools_split.py);
2. in the rectools environment: ``.venv-rectools/bin/python bench/rectools_fit.py`` fits each rectools model on it
   and writes its top-200 lists over the whole catalogue, seen items filtered, to ``WORK/fits``;
3. here again: every model's lists are scored on exactly our test targets with ``hstu.metrics``, beside the
   most-popular baseline and, with ``--our-checkpoint``, our model (both through ``hstu eval``'s full ranking).

rectools 0.19 pins numpy < 2 and an older pytorch-lightning, so it never becomes a dependency of this package:

    python -m venv .venv-rectools && .venv-rectools/bin/pip install -r bench/requirements-rectools.txt
    python bench/compare_rectools.py --data-dir DIR [--our-checkpoint runs/x/best.pt] [--max-epochs 15]

Results: ``bench/results/compare_rectools_<data>.json`` and ``.md``. ``--skip-fit`` scores the lists already in
``WORK/fits`` (written by an earlier or a separate ``rectools_fit.py`` run) without fitting again; ``--resume``
continues interrupted fits from their per-epoch checkpoints (a fit of ml-1m-half takes hours on two cores).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import env_header, slug

METRICS = ("HR@10", "HR@50", "HR@200", "NDCG@10", "NDCG@50", "NDCG@200", "MRR")
DEFAULT_MODELS = "hstu,sasrec,hstu-large"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder with a MovieLens ratings file (ml-1m or ml-100k format)")
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"rectools models to fit (default {DEFAULT_MODELS})")
    p.add_argument("--max-epochs", default="100",
                   help="epoch cap of the rectools fits: N, or name=N pairs such as 15,hstu-large=4 (default 100; "
                        "early stopping with patience 5 usually ends them first)")
    p.add_argument("--our-checkpoint", help="our model's best.pt, scored as `hstu eval` scores it")
    p.add_argument("--device", default="cpu", help="device for our checkpoint (default cpu)")
    p.add_argument("--work-dir", help="split and top-K files (default runs/compare_rectools_<data>)")
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    p.add_argument("--venv", default=str(ROOT / ".venv-rectools"), help="the rectools environment")
    p.add_argument("--skip-fit", action="store_true", help="score the lists already in WORK/fits")
    p.add_argument("--resume", action="store_true",
                   help="continue interrupted rectools fits from WORK/fits/ckpt, skip finished ones")
    return p.parse_args(argv)


def run_rectools(venv, split_dir, fits_dir, models, max_epochs, resume=False):
    python = Path(venv) / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"{python} is missing: create the rectools environment first (python -m venv {venv} && "
                         f"{venv}/bin/pip install -r bench/requirements-rectools.txt), or pass --skip-fit")
    cmd = [str(python), str(ROOT / "bench" / "rectools_fit.py"), "--split-dir", str(split_dir), "--out-dir",
           str(fits_dir), "--models", models, "--max-epochs", str(max_epochs)] + (["--resume"] if resume else [])
    print("running", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def score_fits(fits_dir, test):
    """Rows for every ``topk_<model>.npz`` in ``fits_dir``, scored on ``test`` (our test-target frame)."""
    import numpy as np

    from bench.topk_metrics import list_ranks, topk_metrics

    rows = []
    for path in sorted(Path(fits_dir).glob("topk_*.npz")):
        name = path.stem[len("topk_"):]
        lists = np.load(path)
        info_path = path.with_name(f"fit_{name}.json")
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        metrics = topk_metrics(lists["users"], lists["items"], test["user"].to_numpy(), test["item"].to_numpy())
        ranks = list_ranks(lists["users"], lists["items"], test["user"].to_numpy(), test["item"].to_numpy())
        rows.append({"model": f"rectools {name}", **metrics, "ranks": ranks, "fit_s": info.get("fit_s"),
                     "epochs": info.get("epochs"),
                     "best_valid_recall@10": info.get("best_valid_recall@10"), "settings": info.get("settings"),
                     "ranking": f"top-{metrics['K']} lists (MRR truncated at {metrics['K']})"})
    return rows


def our_rows(seqs, checkpoint, data_dir, device):
    """The most-popular baseline and, given a checkpoint, our model: ``hstu eval``'s full ranking, seen items
    filtered."""
    from hstu.evaluate import evaluate_model, evaluate_popularity

    rows = []
    if checkpoint:
        from hstu.checkpoint import load_checkpoint
        from hstu.serving import load_for_inference

        model, _, ours, dev = load_for_inference(checkpoint, data_dir, "ml-1m", device)
        start = time.time()
        metrics = evaluate_model(model, ours, "test", device=dev, return_ranks=True)
        ckpt = load_checkpoint(checkpoint)
        state = ckpt.get("state", {})
        rows.append({"model": "ours (hstu)", **{k: metrics[k] for k in (*METRICS, "users")}, "ranks": metrics["ranks"],
                     "fit_s": None,
                     "epochs": state.get("epoch"), "best_epoch": state.get("best_epoch"),
                     "eval_s": round(time.time() - start, 1), "settings": ckpt.get("model_config"),
                     "checkpoint": str(checkpoint), "ranking": "full"})
    pop = evaluate_popularity(seqs, "test", max_seq_len=200, return_ranks=True)
    rows.append({"model": "most popular", **{k: pop[k] for k in (*METRICS, "users")}, "ranks": pop["ranks"],
                 "fit_s": None, "epochs": None, "ranking": "full"})
    return rows


PAIRED = ("HR@10", "NDCG@10")


def paired_rows(rows, reference="ours (hstu)"):
    """``reference`` minus every other row on the same test users, with paired-bootstrap 95 % intervals (none
    without a ``reference`` row). Every row's ``ranks`` are in our split's user order."""
    from bench.topk_metrics import paired_difference

    ref = next((r for r in rows if r["model"] == reference), None)
    if ref is None:
        return []
    return [{"model": r["model"], "against": reference,
             **{m: dict(zip(("mean", "low", "high"), paired_difference(ref["ranks"], r["ranks"], m))) for m in PAIRED}}
            for r in rows if r is not ref]


def markdown(result):
    h = result["header"]
    lines = [f"# Our HSTU vs rectools on {h['data']}", "",
             f"{h['users']} users, {h['num_items']} items; leave-one-out test targets of our split, seen items "
             f"filtered, scored by hstu.metrics. Commit {h['commit']}, {h['date']}, {h['device']}.", "",
             "| model | HR@10 | HR@50 | HR@200 | NDCG@10 | NDCG@50 | NDCG@200 | MRR | fit s | epochs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        cells = [f"{r[k]:.4f}" for k in METRICS]
        fit = "" if r.get("fit_s") is None else f"{r['fit_s']:.0f}"
        epochs = "" if r.get("epochs") is None else str(r["epochs"])
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {fit} | {epochs} |")
    if result.get("paired"):
        lines += ["", f"Differences on the same users, {result['paired'][0]['against']} minus each row (paired "
                  "bootstrap over users, 2,000 resamples, 95 % interval):", "",
                  "| row | " + " | ".join(f"Δ {m}" for m in PAIRED) + " |", "|---|" + "---|" * len(PAIRED)]
        for d in result["paired"]:
            cells = [f"{d[m]['mean']:+.4f} [{d[m]['low']:+.4f}, {d[m]['high']:+.4f}]" for m in PAIRED]
            lines.append(f"| {d['model']} | " + " | ".join(cells) + " |")
    lines += ["", *[f"- {n}" for n in result["notes"]], ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from bench.rectools_split import export_split, split_frames
    from hstu.train import load_sequences

    data, seqs = load_sequences(args.data_dir, "ml-1m")
    tag = slug(Path(args.data_dir).resolve().name)
    work = Path(args.work_dir or ROOT / "runs" / f"compare_rectools_{tag}")
    meta = export_split(seqs, work / "split", data.name)
    print(f"split: {meta['users']} users, {meta['num_items']} items, {meta['train_events']} events -> {work / 'split'}")
    if not args.skip_fit:
        run_rectools(args.venv, work / "split", work / "fits", args.models, args.max_epochs, args.resume)
    frames = split_frames(seqs)
    test = frames["test"]
    known = set(frames["train"]["item"].tolist())
    unknown_targets = int((~test["item"].isin(known)).sum())
    rows = score_fits(work / "fits", test) + our_rows(seqs, args.our_checkpoint, args.data_dir, args.device)
    header = {**env_header(torch, torch.device("cpu")), "data": tag, "data_dir": str(Path(args.data_dir).resolve()),
              "format": data.name, "users": len(seqs), "num_items": int(seqs.num_items)}
    notes = [
        "rectools models: d 50, session length 200, sampled softmax over 128 negatives, logits / 0.05, lr 1e-3, "
        "batch 128, validation on the second-to-last event, early stopping on full-catalogue validation recall@10 "
        "(patience 5), best epoch's weights; hstu 2 blocks 1 head, hstu-large 8 blocks 2 heads, sasrec 2 blocks 1 head; "
        "HSTU recommends with the test target's timestamp (time-aware inference). See each row's settings in the JSON.",
        "rectools rows are scored from top-200 lists: HR and NDCG are exact, MRR counts ranks within the list only "
        "(under the full-ranking MRR by less than 1/201); ours and most popular rank the full catalogue.",
        f"{unknown_targets} test target(s) are items absent from every training history, which rectools cannot "
        "recommend (its catalogue is the items of its training data).",
        "sasrec keeps rectools' default dot-product similarity (HSTU's is cosine), so the shared logits / 0.05 scales "
        "its logits far more: its row is no tuned SASRec.",
        "rectools caps a history at 200 events, ours at 199 (one slot of a 200-token input holds the target).",
    ]
    caps = {r["model"]: (r["epochs"], (r.get("settings") or {}).get("max_epochs")) for r in rows}
    capped = [m for m, (done, cap) in caps.items() if cap is not None and done is not None and done >= cap]
    if capped:
        notes.append(f"stopped by the epoch cap, not by early stopping: {', '.join(capped)} (--max-epochs)")
    paired = paired_rows(rows)
    for r in rows:
        r.pop("ranks")
    result = {"header": header, "rows": rows, "paired": paired, "notes": notes}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"compare_rectools_{tag}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out / stem}.json and .md")
    return result


if __name__ == "__main__":
    main()
