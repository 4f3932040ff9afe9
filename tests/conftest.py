"""Shared pytest setup.

Triton kernels: without a CUDA device they run in Triton's CPU interpreter (``TRITON_INTERPRET=1``), which Triton
reads when a kernel is decorated, so it is set here, before any test module imports triton. ``import torch`` does
not import triton. A variable already set in the environment wins.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
