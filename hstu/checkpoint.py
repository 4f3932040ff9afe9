"""Checkpoints: weights + configs + training state in one file, written atomically, checked on load.

A file is one header line, ``hstu-checkpoint 1 sha256=<hex> bytes=<n>``, then the ``n`` bytes ``torch.save``
wrote. The checksum is verified before anything is unpickled, and unpickling takes plain data only
(``weights_only``), so a truncated, bit-flipped or foreign file is refused with a message instead of being used.
"""

import glob
import hashlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List

import torch

FORMAT_VERSION = 1
_HEADER = re.compile(rb"hstu-checkpoint (\d+) sha256=([0-9a-f]{64}) bytes=(\d+)")
_HEADER_MAX = 128  # the header line is about 100 bytes: look no further for its newline


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what is wrong with it."""


def save_checkpoint(path, payload: Dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` through a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    header = f"hstu-checkpoint {FORMAT_VERSION} sha256={hashlib.sha256(body).hexdigest()} bytes={len(body)}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.encode())
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(folder, names: Iterable[str]) -> List[Path]:
    """Delete the ``<name>.*.tmp`` files ``save_checkpoint`` leaves behind when its process is killed mid-write
    (SIGKILL runs no cleanup). Call it only where no other process is writing those checkpoints."""
    removed = []
    for name in names:
        for tmp in sorted(Path(folder).glob(f"{glob.escape(name)}.*.tmp")):
            if tmp.is_file():
                tmp.unlink()
                removed.append(tmp)
    return removed


def _read_body(path: Path) -> bytes:
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if not raw:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    end = raw.find(b"\n", 0, _HEADER_MAX)
    match = _HEADER.fullmatch(raw[:end]) if end >= 0 else None
    if match is None:
        raise CheckpointError(
            f"{path} is not an hstu checkpoint: it does not start with the 'hstu-checkpoint' header that "
            "hstu writes (a file saved by torch.save or pickle, or by another program?)"
        )
    version, digest, size = int(match[1]), match[2].decode(), int(match[3])
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}; this hstu reads {FORMAT_VERSION}")
    body = raw[end + 1:]
    if len(body) < size:
        raise CheckpointError(f"checkpoint {path} is truncated: {len(body)} of its {size} payload bytes are there")
    if len(body) > size:
        raise CheckpointError(f"checkpoint {path} has {len(body) - size} bytes past its {size}-byte payload")
    if hashlib.sha256(body).hexdigest() != digest:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its payload's sha256 differs from the one recorded when it was written"
        )
    return body


def load_checkpoint(path, map_location="cpu", require: Iterable[str] = ("model_config", "model")) -> Dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``, holding at least the entries ``require``.

    FileNotFoundError when there is no file; ``CheckpointError`` (a ValueError) naming the file for an empty,
    truncated, corrupt (checksum), foreign or incomplete one.
    """
    path = Path(path)
    body = _read_body(path)
    try:
        payload = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the caller
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"checkpoint {path} cannot be unpickled ({type(err).__name__}: {first[:200]})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} is not an hstu checkpoint: it holds a {type(payload).__name__}, not a dict")
    missing = [k for k in require if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)} (not written by hstu train?)")
    return payload


def non_finite_tensors(state: Dict[str, torch.Tensor]) -> List[str]:
    """The names of the floating-point tensors of ``state`` that hold a NaN or an infinity."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
