"""What the M-FALCON benchmark shows of its timed rows: the table printed after each m and the plot of
candidates/s against m."""

import sys

from bench.common import pyplot, save_figure


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


def plot(rows, path, header):
    plt = pyplot()
    if plt is None:
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
    save_figure(plt, fig, path)
