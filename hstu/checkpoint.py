"""Checkpoints: weights + configs + training state in one file, written atomically."""

import os
import tempfile
from pathlib import Path
from typing import Any, Dict

import torch


def save_checkpoint(path, payload: Dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` through a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; a missing or foreign file gets a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(payload, dict) or "model_config" not in payload or "model" not in payload:
        raise ValueError(f"{path} is not an hstu checkpoint (no model_config/model entries)")
    return payload
