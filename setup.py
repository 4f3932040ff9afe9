"""Build script: pure Python by default, plus the CUDA extension when it can (or is asked to) be built.

The extension is built when ``HSTU_BUILD_CUDA=1``, or when nvcc and a CUDA build of torch are both present.
``HSTU_SKIP_CUDA_BUILD=1`` forces a pure-Python install. Target architectures come from
``HSTU_CUDA_ARCHS`` (default ``90``: Hopper), never from the build machine's GPU.
"""

import glob
import os
import shutil

from setuptools import setup


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
    can = torch.version.cuda is not None and shutil.which("nvcc") is not None
    if not (asked or can):
        return [], {}
    sources = sorted(glob.glob("csrc/**/*.cu", recursive=True) + glob.glob("csrc/**/*.cpp", recursive=True))
    if not sources:
        # no CUDA kernels exist yet (see csrc/README.md): nothing to compile
        return [], {}
    archs = os.environ.get("HSTU_CUDA_ARCHS", "90").split(",")
    gencode = []
    for arch in archs:
        gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    ext = CUDAExtension(
        name="hstu_kernels._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc/include")],
        extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17", "--use_fast_math", *gencode]},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
