"""Build helpers for the host-compiled C++ tests of ``csrc/include/hstu`` (g++ only: no nvcc, no torch headers)."""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
INCLUDE = ROOT / "csrc" / "include"
HERE = Path(__file__).resolve().parent


def host_compiler():
    """The C++ compiler to use (``$CXX`` or g++), or None when there is none."""
    cxx = os.environ.get("CXX", "g++")
    return shutil.which(cxx)


def build(source: str, flags=(), name=None) -> Path:
    """Compile ``tests/ops/cuda_host/<source>`` against the headers; the binary is cached by a hash of its inputs."""
    cxx = host_compiler()
    if cxx is None:
        raise RuntimeError("no host C++ compiler")
    src = HERE / source
    digest = hashlib.sha256()
    for path in sorted([src, *INCLUDE.rglob("*.h"), *INCLUDE.rglob("*.cuh"), *HERE.glob("*.h")]):
        digest.update(path.read_bytes())
    digest.update(" ".join([cxx, *flags]).encode())
    out_dir = Path(tempfile.gettempdir()) / "hstu-host-tests"
    out_dir.mkdir(exist_ok=True)
    exe = out_dir / f"{name or src.stem}-{digest.hexdigest()[:16]}"
    if not exe.exists():
        tmp = exe.with_suffix(f".tmp{os.getpid()}")
        cmd = [cxx, "-std=c++20", "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(INCLUDE), "-I", str(HERE),
               *flags, str(src), "-o", str(tmp), "-lpthread"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"compile failed: {' '.join(cmd)}\n{res.stderr[-6000:]}")
        os.replace(tmp, exe)
    return exe


def run(exe: Path, stdin: str = "", args=(), timeout=600) -> str:
    res = subprocess.run([str(exe), *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{exe.name} exited {res.returncode}:\n{res.stderr[-6000:]}")
    return res.stdout
