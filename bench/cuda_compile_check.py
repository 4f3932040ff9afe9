#!/usr/bin/env python3
"""Compile the CUDA kernels offline and check ptxas's report: no GPU, no torch.

Each instantiation in ``csrc/instantiations/`` is compiled with nvcc for each target (``sm_80``, ``sm_90a``)
against ``csrc/include`` only (the torch launchers are not compiled here), with ``-Xptxas -v``. The check fails on

- a compile error (including a kernel whose shared memory exceeds the target's limit: a static_assert),
- any warning from nvcc or ptxas,
- register spills above the budget (``--spill-budget`` bytes of spill stores + loads per kernel; default 0),
- a kernel that uses a stack frame beyond the budget (local arrays that did not stay in registers).

``--launchers`` also compiles the torch launchers (``csrc/*/launch.cu`` with nvcc, ``csrc/bindings.cpp`` with the host
compiler) against the installed torch's headers, a syntax and type check (a CPU wheel of torch lacks one
generated CUDA header, which is stubbed).

Writes a per-kernel table (registers, spills, stack, compile time) to ``bench/results/cuda_compile_check.txt``
(``--out``). ``--subset quick`` compiles the representative subset the CI test runs
(``tests/ops/test_cuda_compile.py``): bf16 at head dim 128 for both targets (forward, backward with its dq and
reduction kernels, cached scoring), the bf16 head-dim-64 backward on sm_90a, the fp16 head-dim-64 forward on
sm_80 (the fp16 conversions and mma) and the bf16 head-dim-128 sm90-family forward (wgmma / TMA on sm_90a; for
sm_80 it compiles to a trap, as setup.py builds it);
the rest instantiate the same templates with other constants.
``--subset full`` (the default) compiles every file.

    python bench/cuda_compile_check.py                   # everything, all cores
    python bench/cuda_compile_check.py --subset quick -j 2
"""

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INST = ROOT / "csrc" / "instantiations"
TARGETS = ("80", "90a")
QUICK = (
    ("attention_fwd_hdim128_bf16_sm80.cu", ("80", "90a")),
    ("attention_bwd_hdim128_bf16_sm80.cu", ("80", "90a")),
    ("cached_fwd_hdim128_bf16_sm80.cu", ("80", "90a")),
    ("attention_bwd_hdim64_bf16_sm80.cu", ("90a",)),
    ("attention_fwd_hdim64_fp16_sm80.cu", ("80",)),
    ("attention_fwd_hdim128_bf16_sm90.cu", ("80", "90a")),
)


def nvcc_path():
    return os.environ.get("NVCC") or shutil.which("nvcc") or (
        str(Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc") if os.environ.get("CUDA_HOME") else None)


def jobs_for(subset):
    if subset == "quick":
        return [(INST / name, arch) for name, archs in QUICK for arch in archs]
    # the sm90 files too for every target: setup.py compiles each file for each target (they trap off sm_90a)
    return [(path, arch) for path in sorted(INST.glob("*.cu")) for arch in TARGETS]


def demangle(names):
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None or not names:
        return {n: n for n in names}
    res = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    out = res.stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def short_name(full):
    """'hstu::arch::kernel_entry<hstu::AttentionFwdKernel<hstu::bf16, 128, ...>, ...>(...)' (or
    kernel_entry_grid_constant<...>) -> 'AttentionFwdKernel<bf16, 128, ...>'."""
    m = re.search(r"kernel_entry(?:_grid_constant)?<hstu::(\w+(?:<[^<>]*>)?)", full)
    name = m.group(1) if m else full
    return name.replace("hstu::", "")


def parse_ptxas(text, arch):
    """[{kernel, regs, spill_stores, spill_loads, stack}] from ptxas -v output."""
    kernels, cur = [], None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for 'sm_(\w+)'", line)
        if m:
            cur = {"mangled": m.group(1), "arch": m.group(2), "regs": None, "spill_stores": 0, "spill_loads": 0,
                   "stack": 0}
            kernels.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = (int(x) for x in m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m.group(1))
    return kernels


def compile_one(nvcc, path, arch, workdir, extra):
    obj = Path(workdir) / f"{path.stem}.sm{arch}.o"
    cmd = [nvcc, "-std=c++17", "-O3", "-c", str(path), "-o", str(obj), "-I", str(ROOT / "csrc" / "include"),
           "-gencode", f"arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v", *extra]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    return {"file": path.name, "arch": arch, "rc": res.returncode, "seconds": time.time() - t0,
            "output": res.stdout + res.stderr, "cmd": " ".join(cmd)}


def compile_launchers(nvcc, workdir):
    """Compile the torch-facing sources against torch's headers: [(name, rc, seconds, output)]."""
    import sysconfig

    import torch

    inc = Path(torch.__file__).parent / "include"
    stub = Path(workdir) / "stub"
    macros = stub / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not (inc / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        macros.parent.mkdir(parents=True, exist_ok=True)
        macros.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = ["-I", str(ROOT / "csrc" / "include"), "-I", str(ROOT / "csrc"), "-I", str(stub),
                "-isystem", str(inc), "-isystem", str(inc / "torch" / "csrc" / "api" / "include"),
                "-isystem", sysconfig.get_paths()["include"]]
    defines = ["-DHSTU_HDIM_64", "-DHSTU_HDIM_128", "-DHSTU_SM90", "-DTORCH_EXTENSION_NAME=_C"]
    cxx = os.environ.get("CXX", "g++")
    jobs = [(src, [nvcc, "-std=c++17", "-O2", "-c", str(ROOT / src), "-o", str(Path(workdir) / "l.o"),
                   "-gencode", "arch=compute_80,code=sm_80", *includes, *defines])
            for src in ("csrc/hstu_attention/launch.cu", "csrc/hstu_cached_attention/launch.cu")]
    jobs.append(("csrc/bindings.cpp", [cxx, "-std=c++17", "-O1", "-fPIC", "-c", str(ROOT / "csrc" / "bindings.cpp"),
                                       "-o", str(Path(workdir) / "b.o"), *includes, *defines]))
    out = []
    for name, cmd in jobs:
        t0 = time.time()
        res = subprocess.run(cmd, capture_output=True, text=True)
        out.append((name, res.returncode, time.time() - t0, res.stdout + res.stderr))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", choices=("full", "quick"), default="full")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--spill-budget", type=int, default=0, help="max bytes of spill stores + loads per kernel")
    ap.add_argument("--stack-budget", type=int, default=0, help="max bytes of stack frame per kernel")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cuda_compile_check.txt"))
    ap.add_argument("--extra", default="", help="extra nvcc flags, space separated")
    ap.add_argument("--launchers", action="store_true", help="also compile the torch launchers (needs torch)")
    args = ap.parse_args(argv)

    nvcc = nvcc_path()
    if nvcc is None:
        print("nvcc not found (PATH, $NVCC or $CUDA_HOME)", file=sys.stderr)
        return 2
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    jobs = jobs_for(args.subset)
    missing = [str(p) for p, _ in jobs if not p.exists()]
    if missing:
        print("missing instantiations (run csrc/generate_instantiations.py):", ", ".join(missing), file=sys.stderr)
        return 2
    t0 = time.time()
    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda job: compile_one(nvcc, *job, workdir, args.extra.split()), jobs))
        launchers = compile_launchers(nvcc, workdir) if args.launchers else []
    wall = time.time() - t0

    failures, rows = [], []
    for name, rc, _, output in launchers:
        problems = [ln for ln in output.splitlines() if re.search(r"\b(error|warning)\b", ln, re.I)]
        if rc != 0 or problems:
            failures.append(f"{name}: {'compile failed' if rc else 'warnings'}\n    " + "\n    ".join(problems[:5]))
    for r in results:
        if r["rc"] != 0:
            errors = [ln for ln in r["output"].splitlines() if "error" in ln.lower()][:5]
            failures.append(f"{r['file']} sm_{r['arch']}: compile failed\n    " + "\n    ".join(errors))
            continue
        warnings = [ln.strip() for ln in r["output"].splitlines() if re.search(r"\bwarning\b", ln, re.I)]
        if warnings:
            failures.append(f"{r['file']} sm_{r['arch']}: warnings\n    " + "\n    ".join(warnings[:5]))
        kernels = parse_ptxas(r["output"], r["arch"])
        names = demangle([k["mangled"] for k in kernels])
        for k in kernels:
            k["name"] = short_name(names[k["mangled"]])
            k["file"] = r["file"]
            spill = k["spill_stores"] + k["spill_loads"]
            if spill > args.spill_budget:
                failures.append(f"{r['file']} sm_{k['arch']} {k['name']}: {spill} bytes of spills > budget "
                                f"{args.spill_budget}")
            if k["stack"] > args.stack_budget:
                failures.append(f"{r['file']} sm_{k['arch']} {k['name']}: {k['stack']} bytes of stack > budget "
                                f"{args.stack_budget}")
            rows.append(k)
        if not kernels:
            failures.append(f"{r['file']} sm_{r['arch']}: ptxas reported no kernel")

    lines = [
        "# CUDA compile check (bench/cuda_compile_check.py)",
        f"# {datetime.datetime.now().isoformat(timespec='seconds')} | {version} | subset {args.subset} | "
        f"{len(results)} compiles, {args.jobs} jobs, {wall:.0f} s wall",
        f"# budgets: spills <= {args.spill_budget} B per kernel, stack <= {args.stack_budget} B; no warnings",
        "# flags: -std=c++17 -O3 -Xptxas -v -gencode arch=compute_X,code=sm_X " + args.extra,
        "",
        f"{'target':7} {'kernel':62} {'regs':>4} {'spill st/ld':>11} {'stack':>5}  file",
    ]
    for k in sorted(rows, key=lambda k: (k["arch"], k["file"], k["name"])):
        lines.append(f"sm_{k['arch']:5} {k['name']:62} {k['regs']:>4} {k['spill_stores']:>5}/{k['spill_loads']:<5} "
                     f"{k['stack']:>5}  {k['file']}")
    lines.append("")
    lines.append("compile seconds: " + ", ".join(f"{r['file']}@sm_{r['arch']} {r['seconds']:.0f}" for r in results))
    if launchers:
        lines.append("torch launchers (against the installed torch's headers): " + ", ".join(
            f"{name} {'ok' if rc == 0 else 'FAILED'} ({sec:.0f} s)" for name, rc, sec, _ in launchers))
    lines.append("")
    lines.append("RESULT: " + ("PASS" if not failures else f"FAIL ({len(failures)})"))
    lines += failures
    report = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
