"""What the CUDA extension is built from, and with which flags: shared by ``setup.py`` (ahead of time, which loads
this file by path, without importing the package) and ``cuda_jit.py`` (``torch.utils.cpp_extension.load``).

Pure Python, no torch import. Environment:

- ``HSTU_CUDA_ARCHS``: target architectures, ``;`` or ``,`` separated (default ``80;90a``). The sm80 kernels
  (``mma.sync``) are compiled for each; ``80`` also embeds ``compute_80`` PTX so newer GPUs can JIT it.
- ``HSTU_CUDA_HDIMS``: head dims to build, a subset of ``64,128`` (default both): fewer files, faster builds.
"""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HEAD_DIMS = (64, 128)
DEFAULT_ARCHS = "80;90a"
KNOWN_ARCHS = ("80", "86", "89", "90", "90a")


def head_dims(env=None):
    """The head dims to build, from ``HSTU_CUDA_HDIMS``."""
    env = os.environ if env is None else env
    raw = env.get("HSTU_CUDA_HDIMS", "").strip()
    if not raw:
        return HEAD_DIMS
    dims = tuple(sorted({int(x) for x in re.split(r"[;,\s]+", raw) if x}))
    bad = [d for d in dims if d not in HEAD_DIMS]
    if bad or not dims:
        raise ValueError(f"HSTU_CUDA_HDIMS must name head dims among {HEAD_DIMS}, got {raw!r}")
    return dims


def archs(env=None):
    """The target architectures, from ``HSTU_CUDA_ARCHS`` (e.g. ``["80", "90a"]``)."""
    env = os.environ if env is None else env
    raw = env.get("HSTU_CUDA_ARCHS", DEFAULT_ARCHS).strip() or DEFAULT_ARCHS
    out = [x for x in re.split(r"[;,\s]+", raw.replace("sm_", "")) if x]
    bad = [a for a in out if a not in KNOWN_ARCHS]
    if bad:
        raise ValueError(f"HSTU_CUDA_ARCHS: unknown architecture(s) {bad}; known: {', '.join(KNOWN_ARCHS)}")
    return out


def instantiation_files(root=ROOT, dims=None, arch_list=None):
    """The generated instantiation sources for these head dims (and kernel families the archs can run)."""
    dims = head_dims() if dims is None else dims
    arch_list = archs() if arch_list is None else arch_list
    files = []
    for path in sorted((Path(root) / "csrc" / "instantiations").glob("*.cu")):
        m = re.search(r"_hdim(\d+)_\w+?_(sm\d+)\.cu$", path.name)
        if m is None or int(m.group(1)) not in dims:
            continue
        if m.group(2) == "sm90" and "90a" not in arch_list:
            continue  # wgmma / tma kernels exist only for sm_90a
        files.append(path)
    return files


def sources(root=ROOT, dims=None, arch_list=None):
    """Every source of ``hstu_kernels._C``: bindings, the torch launchers, the instantiations."""
    root = Path(root)
    fixed = [root / "csrc" / "bindings.cpp", root / "csrc" / "hstu_attention" / "launch.cu",
             root / "csrc" / "hstu_cached_attention" / "launch.cu"]
    return [str(p) for p in fixed + instantiation_files(root, dims, arch_list)]


def include_dirs(root=ROOT):
    root = Path(root)
    return [str(root / "csrc" / "include"), str(root / "csrc")]


def gencode_flags(arch_list=None):
    flags = []
    for arch in archs() if arch_list is None else arch_list:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    if "80" in (archs() if arch_list is None else arch_list):
        flags += ["-gencode", "arch=compute_80,code=compute_80"]
    return flags


def define_flags(dims=None, arch_list=None):
    """``HSTU_HDIM_<d>`` per head dim built, and ``HSTU_SM90`` when the sm_90a kernel family is (its files are
    included only with a ``90a`` target and hold real code only in that pass; the launchers then pick it on
    compute capability 9.0)."""
    flags = [f"-DHSTU_HDIM_{d}" for d in (head_dims() if dims is None else dims)]
    if "90a" in (archs() if arch_list is None else arch_list):
        flags.append("-DHSTU_SM90")
    return flags


def nvcc_flags(arch_list=None, dims=None):
    # no --use_fast_math: the kernels call the fast instructions they want (tanh / ex2 / rcp approx) explicitly
    return ["-O3", "-std=c++17", "-lineinfo", *gencode_flags(arch_list), *define_flags(dims, arch_list)]


def cxx_flags(dims=None, arch_list=None):
    return ["-O3", "-std=c++17", *define_flags(dims, arch_list)]
