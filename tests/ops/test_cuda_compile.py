"""The CUDA compile check (``bench/cuda_compile_check.py --subset quick``) as a test: nvcc compiles a
representative subset of the instantiations for sm_80 and sm_90a against the headers only (no torch, no GPU) and
the test fails on compile errors, nvcc / ptxas warnings, register spills or stack frames (budget 0 bytes).

The subset (about 1.5-2 minutes on 2 cores): bf16 head dim 128 forward, backward (dk/dv, deterministic dq,
slot reductions) and cached scoring for both targets, the bf16 head-dim-64 backward for sm_90a, the fp16
head-dim-64 forward for sm_80. ``python bench/cuda_compile_check.py`` compiles every file (about 4.5 minutes on
2 cores) and refreshes ``bench/results/cuda_compile_check.txt``. Skipped (with the reason) without nvcc.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import cuda_compile_check  # noqa: E402

pytestmark = pytest.mark.skipif(cuda_compile_check.nvcc_path() is None,
                                reason="nvcc not found (PATH, $NVCC, $CUDA_HOME)")


def test_quick_subset_compiles_clean(tmp_path):
    out = tmp_path / "cuda_compile_check.txt"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "cuda_compile_check.py"), "--subset", "quick",
                          "-j", str(os.cpu_count() or 2), "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    report = out.read_text() if out.exists() else res.stdout + res.stderr
    assert res.returncode == 0, report[-6000:]
    assert "RESULT: PASS" in report
    kernels = [ln for ln in report.splitlines() if ln.startswith("sm_")]
    assert any(ln.startswith("sm_80") for ln in kernels) and any(ln.startswith("sm_90a") for ln in kernels)
    for name in ("AttentionFwdKernel", "AttentionBwdKernel", "AttentionDqKernel", "ReduceSlotsKernel",
                 "CachedFwdKernel"):
        assert any(name in ln for ln in kernels), name


def test_parser_reads_ptxas_output():
    text = """ptxas info    : Compiling entry function '_ZN4hstu4arch12kernel_entryIXEEvT0_' for 'sm_90a'
ptxas info    : Function properties for _ZN4hstu4arch12kernel_entryIXEEvT0_
    16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 560 bytes cmem[0]
"""
    (k,) = cuda_compile_check.parse_ptxas(text, "90a")
    assert (k["arch"], k["regs"], k["spill_stores"], k["spill_loads"], k["stack"]) == ("90a", 255, 12, 8, 16)
