"""The final table of ``bench/gpu_check.sh``: one line per stage, then the speed rows, from the files it wrote.

    python bench/gpu_summary.py WORK_DIR [--markdown OUT.md]

Reads what each stage left in WORK_DIR (any of them may be missing: a stage that did not run or timed out says
so): ``env.txt``, ``pytest_gpu.xml`` (JUnit), ``attention_*.json``, ``mfalcon_*.json``, ``train_<mode>.jsonl``.
"""

import argparse
import glob
import json
import os
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import table


def _latest(work, pattern):
    paths = sorted(glob.glob(os.path.join(work, pattern)), key=os.path.getmtime)
    return paths[-1] if paths else None


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def env_line(work):
    path = os.path.join(work, "env.txt")
    if not os.path.exists(path):
        return "install", "missing", "no env.txt"
    with open(path) as f:
        text = f.read().strip().splitlines()
    return "install", "ok", (text[-1] if text else "")


def tests_line(work):
    path = os.path.join(work, "pytest_gpu.xml")
    if not os.path.exists(path):
        return "gpu tests", "missing", "no JUnit report (timed out or not run)"
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return "gpu tests", "broken", f"unreadable JUnit report: {e}"
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = [c.get("name") for c in root.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    status = "ok" if not failed and passed > 0 else ("FAIL" if failed else "none ran")
    text = f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
    if failed:
        text += " (first: " + ", ".join(failed[:3]) + ")"
    return "gpu tests", status, text


def attention_rows(work):
    """(stage line, rows of [shape, batch, mode, triton ms, triton TFLOP/s, sdpa TFLOP/s, correct])."""
    path = _latest(work, "attention_*.json")
    data = _read_json(path) if path else None
    if not data:
        return ("attention", "missing", "no attention_*.json"), []
    rows = data["rows"]
    table = []
    for r in rows:
        if r["provider"] != "triton":
            continue
        sdpa = next((o for o in rows if o["provider"] == "sdpa" and o["mode"] == r["mode"] and o["batch"] == r["batch"]
                     and (o["B"], o["N"], o["H"], o["D"]) == (r["B"], r["N"], r["H"], r["D"])), None)
        table.append([
            f"({r['B']},{r['N']},{r['H']},{r['D']})", r["batch"], r["mode"],
            f"{r['ms']:.3f}" if r.get("ms") else (r.get("error") or "-"),
            f"{r['tflops']:.0f}" if r.get("tflops") else "-",
            f"{sdpa['tflops']:.0f}" if sdpa and sdpa.get("tflops") else "-",
            "yes" if r.get("correct") else "NO",
        ])
    bad = [t for t in table if t[-1] != "yes"]
    status = "ok" if table and not bad else ("FAIL" if bad else "empty")
    return ("attention", status, f"{len(table)} Triton rows, {len(bad)} failed the correctness gate"), table


def mfalcon_line(work):
    path = _latest(work, "mfalcon_*.json")
    data = _read_json(path) if path else None
    if not data:
        return "m-falcon", "missing", "no mfalcon_*.json"
    rows = [r for r in data.get("rows", []) if r["method"].startswith("mfalcon")]
    if not rows:
        return "m-falcon", "empty", "no M-FALCON rows"
    top = max(rows, key=lambda r: (r["m"], r.get("speedup_vs_naive") or 0))
    text = (f"m = {top['m']}, b_m = {top['bm']}: {top['speedup_vs_naive']:.0f}x naive, "
            f"{100 * top['speedup_over_bound']:.0f}% of the {top['bound']:.0f}x bound")
    rank = data.get("ranking")
    if rank:
        text += f"; ranking {rank['per_user_ms']:.2f} ms/user (6,040 users: {rank['extrapolated_6040_s']:.2f} s)"
    ok = data.get("check", {}).get("ok", False)
    return "m-falcon", "ok" if ok else "FAIL", text + ("" if ok else " (methods disagree)")


def train_line(work):
    times = {}
    for mode in ("unfused", "fused"):
        path = os.path.join(work, f"train_{mode}.jsonl")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            epochs = [json.loads(line) for line in f if line.strip()]
        epochs = [e for e in epochs if "seconds" in e and "epoch" in e]  # the final record holds test metrics
        if epochs:
            times[mode] = (statistics.median(e["seconds"] for e in epochs), len(epochs),
                           epochs[-1].get("valid_NDCG@10", float("nan")))
    if not times:
        return "train", "missing", "no train_*.jsonl (see train_<mode>.log)"
    parts = [f"{m} {t:.1f} s/epoch over {n} (valid NDCG@10 {nd:.4f})" for m, (t, n, nd) in times.items()]
    if len(times) == 2:
        parts.append(f"fused {times['unfused'][0] / times['fused'][0]:.2f}x faster")
    return "train", "ok", "; ".join(parts)


def summarise(work):
    att_line, att_rows = attention_rows(work)
    stages = [env_line(work), tests_line(work), att_line, mfalcon_line(work), train_line(work)]
    text = table(["stage", "status", "result"], stages)
    if att_rows:
        text += "\n\n" + table(["shape", "batch", "mode", "triton ms", "triton TFLOP/s", "sdpa TFLOP/s", "correct"],
                               att_rows)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", help="the folder the stages wrote into")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    if not os.path.isdir(args.work):
        sys.exit(f"gpu_summary: {args.work} is not a folder")
    text = summarise(args.work)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("```text\n" + text + "\n```\n")


if __name__ == "__main__":
    main()
