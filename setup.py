"""Build script: pure Python by default, plus the CUDA extension ``hstu_kernels._C`` when it can (or is asked to)
be built.

The extension is built when ``HSTU_BUILD_CUDA=1``, or when nvcc and a CUDA build of torch are both present;
``HSTU_SKIP_CUDA_BUILD=1`` forces a pure-Python install (so a CPU ``pip install -e .`` compiles nothing).
``HSTU_CUDA_ARCHS`` names the targets (default ``80;90a``: Ampere and Hopper, never the build machine's GPU),
``HSTU_CUDA_HDIMS`` narrows the head dims (default ``64,128``). Sources and flags come from
``hstu_kernels/ops/common/cuda_build.py``, which the JIT path (``cuda_jit.py``) shares. Needs
``--no-build-isolation`` (torch must be importable at build time); ninja compiles the instantiations in parallel
(``MAX_JOBS`` caps the jobs).
"""

import importlib.util
import os
import shutil
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _build_config():
    """hstu_kernels/ops/common/cuda_build.py, loaded by path: importing the package would import torch and more."""
    spec = importlib.util.spec_from_file_location("_hstu_cuda_build", ROOT / "hstu_kernels/ops/common/cuda_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cuda_extensions():
    if os.environ.get("HSTU_SKIP_CUDA_BUILD") == "1":
        return [], {}
    asked = os.environ.get("HSTU_BUILD_CUDA") == "1"
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError:
        if asked:
            raise RuntimeError("HSTU_BUILD_CUDA=1 needs torch importable at build time: use --no-build-isolation")
        return [], {}
    has_nvcc = shutil.which("nvcc") is not None or os.environ.get("CUDA_HOME") is not None
    cuda_torch = torch.version.cuda is not None
    if not (cuda_torch and has_nvcc):
        if asked:
            raise RuntimeError(
                f"HSTU_BUILD_CUDA=1 needs nvcc and a CUDA build of torch (nvcc found: {has_nvcc}, "
                f"torch {torch.__version__}, CUDA {torch.version.cuda})"
            )
        return [], {}
    cfg = _build_config()
    archs, dims = cfg.archs(), cfg.head_dims()
    sources = [os.path.relpath(p, ROOT) for p in cfg.sources(ROOT, dims, archs)]
    ext = CUDAExtension(
        name="hstu_kernels._C",
        sources=sources,
        include_dirs=cfg.include_dirs(ROOT),
        extra_compile_args={"cxx": cfg.cxx_flags(dims), "nvcc": cfg.nvcc_flags(archs, dims)},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
