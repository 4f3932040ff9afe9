"""What every op shares: argument checks, jagged helpers, the bias-table lookup, the backend registry, building
and loading the CUDA extension (``cuda_build``, ``hstu_kernels._C``), and (in the ``triton_*`` modules, which
import Triton) the kernels' host utilities and ``@triton.jit`` device helpers.

Nothing here imports Triton on ``import hstu_kernels``: only ``triton_host`` and ``triton_device`` do, and the
ops load them when a kernel first runs.
"""
