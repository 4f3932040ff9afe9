"""A training run's output folder: one run per folder, its ``log.jsonl``, and Ctrl-C held while an epoch's
log line and checkpoints are written, so that they always describe the same epoch."""

import json
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import List

from .config import ArgumentError

CHECKPOINTS = ("best.pt", "last.pt")
LOG = "log.jsonl"
RUN_FILES = (*CHECKPOINTS, LOG)


class RunExistsError(ArgumentError):
    """The output folder already holds a run, and the new one neither resumes nor overwrites it."""

    def __init__(self, folder: Path, found: List[str]):
        super().__init__("output_dir", f"{folder} already holds a run ({', '.join(found)}): resume it, overwrite "
                         "it, or choose another folder")
        self.folder, self.found = folder, found


def check_output_dir(folder: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that is a file, a resume without ``last.pt``, and a fresh run over an existing one."""
    if folder.exists() and not folder.is_dir():
        raise ArgumentError("output_dir", f"{folder} is a file, not a folder")
    if resume:
        if not (folder / "last.pt").exists():
            raise FileNotFoundError(f"no checkpoint at {folder / 'last.pt'}: nothing to resume")
        return
    found = [name for name in RUN_FILES if (folder / name).exists()]
    if found and not overwrite:
        raise RunExistsError(folder, found)


def clear_run(folder: Path) -> List[str]:
    """Delete the run files of ``folder`` (and nothing else); returns the names deleted."""
    removed = []
    for name in RUN_FILES:
        if (folder / name).is_file():
            (folder / name).unlink()
            removed.append(name)
    return removed


def append_log(folder: Path, record: dict) -> None:
    with open(folder / LOG, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def trim_log(folder: Path, last_epoch: int) -> int:
    """Drop the epoch records past ``last_epoch`` (written by a process killed before it saved that epoch's
    checkpoint, so the resumed run writes them again) and any line cut short; returns how many were dropped."""
    path = folder / LOG
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    keep = [line for line in lines if _epoch_of(line) <= last_epoch]
    if len(keep) < len(lines):
        tmp = path.with_name(path.name + ".trim.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
    return len(lines) - len(keep)


def _epoch_of(line: str) -> float:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        # a line cut short by a kill mid-write: drop it
        return float("inf")
    return record.get("epoch", 0) if isinstance(record, dict) else float("inf")


@contextmanager
def interrupts_deferred():
    """Hold SIGINT (Ctrl-C) until the block ends, then raise the KeyboardInterrupt it would have raised."""
    if threading.current_thread() is not threading.main_thread():
        # signal handlers can only be set from the main thread
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
