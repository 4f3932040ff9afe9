"""Plots of a training run: its learned relative-attention biases, its training curves, and the rectools
comparison.

From a run folder (``hstu train --output-dir RUN``: ``best.pt``, else ``last.pt``, and ``log.jsonl``):

- ``time_bias_<tag>.png``: each block's time-bucket bias ``time_weight [Hb, nb + 1]`` (one line per layer and,
  for per-head tables, per head) over the buckets, labelled by their time ranges: bucket k holds the gaps
  ``|t_i - t_j|`` with k boundaries ``<=`` them (``hstu.bias.RelativeAttentionBias``), so with boundaries
  ``b_0 < ... < b_{n-1}`` the buckets are ``< b_0``, ``b_0 - b_1``, ..., ``>= b_{n-1}``;
- ``position_bias_<tag>.png``: each block's position bias ``pos_weight[:, p(i) - p(j) + N - 1]`` for the
  causal distances p(i) - p(j) = 0..N-1 (a query attends to itself and earlier positions only);
- ``training_<tag>.png``: the loss (and its retrieval and rating parts) and validation NDCG@10 per epoch, the
  best epoch marked;
- ``comparison_<tag>.png`` with ``--compare``: the table of bench/compare_rectools.py as grouped bars.

matplotlib is optional (the ``bench`` extra): without it the script prints a message and writes nothing.

    python bench/plots.py --run runs/hstu [--compare bench/results/compare_rectools_ml-100k.json]
        [--out-dir bench/results] [--tag NAME]      # tag: default the run folder's name
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import grouped_bars, pyplot, save_figure, slug

COMPARE_METRICS = ("HR@10", "NDCG@10", "HR@50", "NDCG@50")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (seconds, symbol), largest first
UNITS = ((31536000, "y"), (604800, "w"), (86400, "d"), (3600, "h"), (60, "min"), (1, "s"))


# ------------------------------------------------------------------------------------------------------------
# what is plotted


def human_seconds(seconds) -> str:
    """``seconds`` in human units (y = 365 d, w, d, h, min, s): a whole number of the largest unit that fits
    in it when that unit divides it, else a whole number under 100 of a smaller one (900 -> "15min",
    2592000 -> "30d"), else 3 significant digits of the largest unit (1000000 -> "1.65w")."""
    seconds = float(seconds)
    if seconds <= 0:
        return "0s"
    fitting = [(size, symbol) for size, symbol in UNITS if seconds >= size] or [UNITS[-1]]
    for i, (size, symbol) in enumerate(fitting):
        if seconds % size == 0 and (i == 0 or seconds // size < 100):
            return f"{int(seconds // size)}{symbol}"
    size, symbol = fitting[0]
    return f"{seconds / size:.3g}{symbol}"


def time_bucket_labels(boundaries) -> list[str]:
    """The time range of each of the ``len(boundaries) + 1`` buckets, e.g. ``[3600, 86400]`` ->
    ``["<1h", "1h-1d", ">=1d"]``; no boundaries: one bucket, ``["all"]``."""
    b = [human_seconds(x) for x in boundaries]
    if not b:
        return ["all"]
    return [f"<{b[0]}"] + [f"{lo}-{hi}" for lo, hi in zip(b, b[1:])] + [f">={b[-1]}"]


def read_log(path) -> tuple[list[dict], int | None]:
    """The epoch records of a run's ``log.jsonl`` in epoch order (the last record of an epoch written twice
    wins) and the best epoch (the final record's, else the epoch of highest validation NDCG@10; None without
    epochs)."""
    epochs, best = {}, None
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed run
        if "epoch" in record:
            epochs[record["epoch"]] = record
        elif "best_epoch" in record:
            best = record["best_epoch"]
    records = [epochs[e] for e in sorted(epochs)]
    if best is None and records:
        best = max(records, key=lambda r: r.get("valid_NDCG@10", float("-inf")))["epoch"]
    return records, best


def find_checkpoint(run_dir) -> Path | None:
    for name in ("best.pt", "last.pt"):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def bias_tables(checkpoint):
    """``(pos, time, boundaries, max_seq_len)`` of a checkpoint's blocks: ``pos`` and ``time`` lists (one per
    layer) of float ``[Hb, 2N - 1]`` / ``[Hb, nb + 1]`` tensors, ``boundaries`` the time buckets' seconds (the
    model's ``time_boundaries`` buffer, built from ``model_config["time_buckets"]``)."""
    from hstu.checkpoint import load_checkpoint
    from hstu.model import HSTURecommender

    ckpt = load_checkpoint(checkpoint)
    model = HSTURecommender.from_config(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    biases = [block.bias for block in model.encoder.blocks]
    pos = [b.pos_weight.detach().float() for b in biases]
    time = [b.time_weight.detach().float() for b in biases]
    boundaries = biases[0].time_boundaries.tolist() if biases else []
    return pos, time, boundaries, model.config.max_seq_len


def _series_labels(tables):
    """``(label, values)`` per layer and, for per-head tables, per head."""
    for layer, table in enumerate(tables, 1):
        for head in range(table.shape[0]):
            label = f"layer {layer}" + (f" head {head + 1}" if table.shape[0] > 1 else "")
            yield label, table[head]


# ------------------------------------------------------------------------------------------------------------
# the plots


def plot_time_bias(plt, time, boundaries, path, title_note="", time_query="self"):
    labels = time_bucket_labels(boundaries)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(labels) + 2), 4.5))
    for label, values in _series_labels(time):
        ax.plot(range(len(labels)), values.tolist(), marker="o", label=label)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xticks(range(len(labels)))
    slanted = len(labels) > 6
    ax.set_xticklabels(labels, rotation=45 if slanted else 0, ha="right" if slanted else "center", fontsize=8)
    # under time_query "next" a token queries at the time of the event it predicts (the target's at evaluation)
    gap = "|t(next event after i) - t(j)|" if time_query == "next" else "|t(i) - t(j)|"
    _finish_bias_plot(plt, fig, ax, f"time gap {gap} (bucket)", "time-bias curve" + title_note, path)


def plot_position_bias(plt, pos, max_seq_len, path, title_note=""):
    n = max_seq_len
    fig, ax = plt.subplots(figsize=(7, 4.5))
    distances = list(range(n))
    for label, values in _series_labels(pos):
        # index p(i) - p(j) + N - 1: the causal half is N - 1 .. 2N - 2
        ax.plot(distances, values[n - 1:].tolist(), marker="o" if n <= 32 else None, ms=3, label=label)
    ax.axhline(0, color="grey", lw=0.6)
    _finish_bias_plot(plt, fig, ax, "distance p(i) - p(j) (0: the query itself)", "position-bias curve" + title_note,
                      path)


def _finish_bias_plot(plt, fig, ax, xlabel, title, path):
    ax.set_xlabel(xlabel)
    ax.set_ylabel("bias value")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(plt, fig, path)


def plot_training(plt, records, best, path, title_note=""):
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_ndcg) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (("loss", "o-"), ("retrieval_loss", "s--"), ("rating_loss", "^:")):
        if any(key in r for r in records):
            ax_loss.plot(epochs, [r.get(key, float("nan")) for r in records], style, ms=4, label=key)
    ax_loss.set_ylabel("training loss (epoch mean)")
    ax_loss.set_title("loss")
    ndcg = [r.get("valid_NDCG@10", float("nan")) for r in records]
    ax_ndcg.plot(epochs, ndcg, "o-", ms=4, label="valid NDCG@10")
    ax_ndcg.set_ylabel("NDCG@10")
    ax_ndcg.set_title("validation NDCG@10")
    if best in epochs:
        for ax in (ax_loss, ax_ndcg):
            ax.axvline(best, color="tab:red", ls="--", lw=1, label=f"best epoch {best}")
        ax_ndcg.plot([best], [ndcg[epochs.index(best)]], "*", color="tab:red", ms=12)
    for ax in (ax_loss, ax_ndcg):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("training curves" + title_note)
    save_figure(plt, fig, path)


def plot_run(run_dir, out_dir, tag=None) -> list[Path]:
    """The bias plots of the run's checkpoint (``best.pt``, else ``last.pt``) and the training curves of its
    ``log.jsonl``, into ``out_dir``; returns the paths written ([] without matplotlib). A missing checkpoint
    or log is said and skipped."""
    plt = pyplot()
    if plt is None:
        return []
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    tag = tag or slug(run_dir.resolve().name)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is None:
        print(f"no best.pt or last.pt in {run_dir}: no bias plots")
    else:
        pos, time, boundaries, max_seq_len = bias_tables(checkpoint)
        note = f" ({run_dir.name}/{checkpoint.name})"
        from hstu.checkpoint import load_checkpoint

        query = load_checkpoint(checkpoint)["model_config"].get("time_query", "self")
        written.append(out_dir / f"time_bias_{tag}.png")
        plot_time_bias(plt, time, boundaries, written[-1], note, time_query=query)
        written.append(out_dir / f"position_bias_{tag}.png")
        plot_position_bias(plt, pos, max_seq_len, written[-1], note)
    log = run_dir / "log.jsonl"
    records, best = read_log(log) if log.is_file() else ([], None)
    if not records:
        print(f"no epoch records in {log}: no training plot")
    else:
        written.append(out_dir / f"training_{tag}.png")
        plot_training(plt, records, best, written[-1], f" ({run_dir.name})")
    return written


def plot_comparison(json_path, out_path) -> Path | None:
    """bench/compare_rectools.py's results JSON as grouped bars: HR@10, NDCG@10, HR@50, NDCG@50, one bar per
    model. Returns the path written (None without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return None
    result = json.loads(Path(json_path).read_text())
    rows, header = result["rows"], result.get("header", {})
    series = {r["model"]: [r.get(m, float("nan")) for m in COMPARE_METRICS] for r in rows}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    title = f"test metrics on {header.get('data', Path(json_path).stem)}"
    if header.get("users"):
        title += f" ({header['users']} users, {header.get('num_items', '?')} items)"
    grouped_bars(ax, list(COMPARE_METRICS), series, "metric value", title)
    ax.grid(True, axis="y", alpha=0.3)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(plt, fig, out_path)
    return out_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder of hstu train (best.pt or last.pt, log.jsonl)")
    p.add_argument("--compare", help="a bench/results/compare_rectools_<data>.json to draw as bars")
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"), help="where the PNGs go")
    p.add_argument("--tag", help="file name tag (default: the run folder's name)")
    args = p.parse_args(argv)
    if not Path(args.run).is_dir():
        p.error(f"--run {args.run} is not a folder")
    if args.compare and not Path(args.compare).is_file():
        p.error(f"--compare {args.compare} is not a file")
    if pyplot() is None:
        return 0
    tag = args.tag or slug(Path(args.run).resolve().name)
    written = plot_run(args.run, args.out_dir, tag)
    if args.compare:
        written.append(plot_comparison(args.compare, Path(args.out_dir) / f"comparison_{tag}.png"))
    print("plots written:", *written, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
