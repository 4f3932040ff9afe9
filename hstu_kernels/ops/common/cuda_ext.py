"""Load the CUDA extension (``hstu_kernels._C``), once: the built module if present, else a JIT build when
``HSTU_CUDA_JIT=1``. Importing this module loads nothing; ``extension()`` does, on first call.
"""

import importlib
import os
from typing import Optional, Tuple

NOT_BUILT = "the CUDA extension is not built"
_HOW = "(HSTU_BUILD_CUDA=1 pip install -e . --no-build-isolation, or HSTU_CUDA_JIT=1 to build it on first use)"

_state: Optional[Tuple[object, str]] = None


def extension() -> Tuple[Optional[object], str]:
    """(the ``_C`` module or None, why it is not there: "" when it is)."""
    global _state
    if _state is None:
        _state = _load()
    return _state


def _load():
    try:
        return importlib.import_module("hstu_kernels._C"), ""
    except ImportError as err:
        missing = getattr(err, "name", None) == "hstu_kernels._C"
        why = NOT_BUILT if missing else f"{NOT_BUILT} (importing hstu_kernels._C failed: {err})"
    if os.environ.get("HSTU_CUDA_JIT", "0") == "1":
        try:
            from . import cuda_jit

            return cuda_jit.build(verbose=os.environ.get("HSTU_CUDA_JIT_VERBOSE", "0") == "1"), ""
        except Exception as err:  # noqa: BLE001 - any build failure becomes the reason the backend is unavailable
            return None, f"{NOT_BUILT} (the JIT build failed: {type(err).__name__}: {str(err)[:300]})"
    return None, f"{why} {_HOW}"


def built_head_dims() -> Tuple[int, ...]:
    module, _ = extension()
    return tuple(module.built_head_dims()) if module is not None else ()


def kernel_families() -> Tuple[str, ...]:
    """The built kernel families: ``"sm80"`` (mma.sync, every target) and ``"sm90"`` (the wgmma / TMA forward,
    picked on compute capability 9.0 unless ``HSTU_CUDA_SM90=0``); empty without the extension."""
    module, _ = extension()
    if module is None:
        return ()
    return tuple(module.kernel_families()) if hasattr(module, "kernel_families") else ("sm80",)
