"""What every benchmark under bench/ shares: the device and version header of its results, the git commit, timing
with CUDA synchronisation and peak memory, the results files (JSON, and CSV under a header line), plots (matplotlib
optional) and plain-text tables.

torch and matplotlib are imported by the callers or inside the functions that need them, so ``--help`` and
``gpu_summary.py`` run without either.
"""

import csv
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------------
# the header: device, versions, commit, date


def git_commit():
    """The checkout's short commit, with "+dirty" when tracked files differ from it. Outside a git checkout (a
    ``git archive`` snapshot that long runs start from, so that edits to the checkout cannot reach them):
    ``$HSTU_COMMIT``, else None."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return os.environ.get("HSTU_COMMIT")


def slug(text):
    """``text`` as a file-name tag: lower case, runs of other characters as one "-"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_name(torch, device):
    """The GPU's name, or the CPU's with its core count and torch's thread count (CPU timings depend on both)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def _cpu_capability(torch):
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return None


def env_header(torch, device):
    """The first keys of every results header: device, capability, torch / triton / CUDA / Python versions, the
    git commit and the date. triton is None where it is not installed."""
    on_cuda = device.type == "cuda"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return dict(
        device=device_name(torch, device), device_type=device.type,
        # on a CPU, the vector ISA torch's kernels use (AVX2, AVX512...): CPU timings compare only within one
        capability=(".".join(map(str, torch.cuda.get_device_capability(device))) if on_cuda
                    else _cpu_capability(torch)),
        torch=torch.__version__, triton=triton_version, cuda=torch.version.cuda if on_cuda else None,
        python=platform.python_version(), commit=git_commit(),
        date=datetime.datetime.now().isoformat(timespec="seconds"),
    )


# ----------------------------------------------------------------------------------------------------------------
# timing and memory


def median(xs):
    return statistics.median(xs) if xs else None


class Timer:
    """Wall-clock runs of a function, synchronising CUDA around each so that queued kernels count, and the CUDA
    peak memory of what runs between ``peak_reset`` and ``peak_mib`` (None on a CPU)."""

    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def __call__(self, fn, repeats, warmup):
        """Seconds of each of ``repeats`` runs of ``fn`` after ``warmup`` untimed ones."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(repeats):
            self.sync()
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return times

    def peak_reset(self):
        """Start a peak-memory window; returns what is allocated at its start (the base of ``peak_mib``)."""
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
            return self.torch.cuda.memory_allocated()
        return 0

    def peak_mib(self, base):
        """MiB of the window's peak above ``base``."""
        if self.cuda:
            return (self.torch.cuda.max_memory_allocated() - base) / 2**20
        return None


# ----------------------------------------------------------------------------------------------------------------
# results files, plots and tables


def write_results(out_dir, stem, result, fields, csv_comments=()):
    """``stem.json``: ``result`` whole; ``stem.csv``: a ``# {result["header"] as JSON}`` line, the columns
    ``fields`` of ``result["rows"]``, then one ``# `` line per entry of ``csv_comments``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{stem}.json", "w") as f:
        json.dump(result, f, indent=1)
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        f.write("# " + json.dumps(result["header"]) + "\n")
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in result["rows"]:
            w.writerow(r)
        f.writelines("# " + line + "\n" for line in csv_comments)
    print(f"wrote {out_dir / stem}.json and .csv")


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, or None, with a message, where matplotlib is missing
    (it is an optional dependency: the results files do not need it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    return plt


def grouped_bars(ax, groups, series, ylabel, title):
    """One bar per series (``{name: [value per group]}``) side by side over each label of ``groups``."""
    width = 0.8 / max(1, len(series))
    for i, (name, ys) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(groups))], ys, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(groups))])
    ax.set_xticklabels(groups, fontsize=7)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def save_figure(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def table(headers, rows):
    """A plain-text table: columns as wide as their widest cell, " | " between them, a rule under the headers."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), "-+-".join("-" * w for w in widths)]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)
