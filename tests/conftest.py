"""Shared pytest setup.

Triton kernels: without a CUDA device they run in Triton's CPU interpreter (``TRITON_INTERPRET=1``), which Triton
reads when a kernel is decorated, so it is set here, before any test module imports triton. ``import torch`` does
not import triton. A variable already set in the environment wins.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty / torch.empty_like / Tensor.new_empty return NaN-filled floats: unwritten elements show."""
    real_empty, real_empty_like, real_new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(real_empty_like(*a, **kw)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **kw: poison(real_new_empty(self, *a, **kw)))
    assert torch.isnan(torch.empty(2)).all()
