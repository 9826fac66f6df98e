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
    max_rss_mb: float  # the child's peak resident set (VmHWM), MB
    seconds: float


# Peak RSS is read from /proc/self/status (VmHWM) at the child's exit: it belongs to the child's
# own address space. wait4's ru_maxrss would not do: it keeps the high-water mark of the forked
# copy of this (large) pytest process from before exec.
_MEASURE = """
import atexit, runpy, sys

report, mode, target = sys.argv[1], sys.argv[2], sys.argv[3]

def _peak() -> None:
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(report, "w") as out:
        out.write(kib)

atexit.register(_peak)
sys.argv = [target, *sys.argv[4:]]
if mode == "module":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    runpy.run_path(target, run_name="__main__")
"""


def run_measured(
    tmp: Path, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None, python_script: bool = False
) -> Run:
    """`lfr-edge ARGS` (or `python SCRIPT ARGS`) as a child with output to files (no pipe can fill)
    and its peak resident set measured."""
    stamp = time.monotonic_ns()
    out, err, peak = tmp / f"out-{stamp}.txt", tmp / f"err-{stamp}.txt", tmp / f"peak-{stamp}.txt"
    wrapper = tmp / "measure_peak.py"
    wrapper.write_text(_MEASURE)
    target = [args[0], *args[1:]] if python_script else ["edge", *args]
    t0 = time.monotonic()
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, str(wrapper), str(peak), "script" if python_script else "module", *target],
            stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, cwd=ROOT,
            env=env if env is not None else dict(os.environ, PYTHONPATH=str(ROOT)),
        )  # fmt: skip
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{' '.join(target)} ran longer than {timeout} s") from None
    seconds = time.monotonic() - t0
    return Run(
        returncode=proc.returncode,
        stdout=out.read_text(errors="replace"),
        stderr=err.read_text(errors="replace"),
        max_rss_mb=int(peak.read_text()) / 1024.0 if peak.exists() else float("inf"),
        seconds=seconds,
    )


# What a refusal "before reading" may cost beyond the same command refusing a tiny file: the
# interpreter's own imports vary by machine (CI once measured 100.8 MB where a workstation measured
# 76, before device commands stopped importing OpenCV and the back-office listener at start-up), so
# the difference is bounded too, which reading even 1 % of an 8 GiB file would exceed 5-fold.
UNREAD_MARGIN_MB = 16.0


def assert_unread(big: Run, tiny: Run) -> None:
    """`big` (a huge input) cost no more memory than `tiny` (the same command on a tiny input), and
    at most the 100 MB the issue set for the whole process."""
    assert big.max_rss_mb <= tiny.max_rss_mb + UNREAD_MARGIN_MB, (big.max_rss_mb, tiny.max_rss_mb)
    assert big.max_rss_mb <= 100, big.max_rss_mb


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space (and no memory unless someone reads it)."""
    with path.open("wb") as f:
        f.truncate(size)
    return path
