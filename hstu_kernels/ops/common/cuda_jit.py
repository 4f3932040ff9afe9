"""Build the CUDA extension in-process (``torch.utils.cpp_extension.load``) for development on a GPU machine.

    from hstu_kernels.ops.common import cuda_jit
    cuda_jit.build(verbose=True)          # compiles csrc/ for this GPU's architecture, loads it, registers the ops

or ``HSTU_CUDA_JIT=1`` in the environment: the first use of the CUDA backend then builds it (minutes; ninja
caches the objects under ``TORCH_EXTENSIONS_DIR``). Needs a checkout with ``csrc/`` (an editable install), nvcc
and a CUDA build of torch. ``HSTU_CUDA_ARCHS`` / ``HSTU_CUDA_HDIMS`` narrow the build as for ``setup.py``; the
default architecture here is the current device's only.
"""

import os

from . import cuda_build


def _device_arch() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability()
    if major == 9:
        return "90a"
    if major >= 10:
        return "80"  # newer GPUs JIT the embedded compute_80 PTX
    return f"{major}{minor}" if f"{major}{minor}" in cuda_build.KNOWN_ARCHS else "80"


def build(verbose: bool = False, archs=None, head_dims=None):
    """Compile and load ``hstu_kernels._C``; returns the module (its ops are then in ``torch.ops.hstu_kernels``)."""
    from torch.utils.cpp_extension import load

    if archs is None:
        archs = cuda_build.archs() if "HSTU_CUDA_ARCHS" in os.environ else [_device_arch()]
    dims = cuda_build.head_dims() if head_dims is None else tuple(head_dims)
    if not (cuda_build.ROOT / "csrc" / "bindings.cpp").exists():
        raise RuntimeError(f"no csrc/ under {cuda_build.ROOT}: the JIT build needs a source checkout")
    name = "hstu_kernels_C_" + "_".join(archs) + "_d" + "_".join(map(str, dims))
    return load(
        name=name,
        sources=cuda_build.sources(dims=dims, arch_list=archs),
        extra_include_paths=cuda_build.include_dirs(),
        extra_cflags=cuda_build.cxx_flags(dims, archs),
        extra_cuda_cflags=cuda_build.nvcc_flags(archs, dims),
        with_cuda=True,
        verbose=verbose,
    )
