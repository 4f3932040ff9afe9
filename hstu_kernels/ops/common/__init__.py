"""Helpers shared by the ops: building and loading the CUDA extension (``hstu_kernels._C``)."""
