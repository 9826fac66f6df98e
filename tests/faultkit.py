"""Helpers for fault-injection tests: run `lfr-edge` as a child and measure what it cost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    max_rss_mb: float  # the child's peak resident set, from wait4's rusage
    seconds: float


def run_measured(tmp: Path, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> Run:
    """`python -m edge ARGS`, output to files (no pipe can fill), peak RSS from the kernel's rusage."""
    out, err = tmp / f"out-{time.monotonic_ns()}.txt", tmp / f"err-{time.monotonic_ns()}.txt"
    t0 = time.monotonic()
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge", *args], stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, cwd=ROOT,
            env=env if env is not None else dict(os.environ),
        )
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                raise AssertionError(f"lfr-edge {' '.join(args)} ran longer than {timeout} s")
            time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
    return Run(
        returncode=proc.returncode,
        stdout=out.read_text(errors="replace"),
        stderr=err.read_text(errors="replace"),
        max_rss_mb=usage.ru_maxrss / 1024.0,  # Linux reports KiB
        seconds=time.monotonic() - t0,
    )


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space (and no memory unless someone reads it)."""
    with path.open("wb") as f:
        f.truncate(size)
    return path
