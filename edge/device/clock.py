"""Whether the system clock is synchronised: alert times, bundle expiry and command validity use it.

A Pi 4 has no RTC: until NTP answers, its clock is wherever the last shutdown left it. The status
heartbeat carries this so the back office can tell a device whose times are not to be trusted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess
import threading
import time
from enum import Enum
from pathlib import Path

# systemd-timesyncd touches this once it has synchronised the clock (what systemd-time-wait-sync
# waits for); readable from inside the service's sandbox.
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
_TIME_ERROR = 5  # adjtimex() result when the kernel's STA_UNSYNC flag is set
_CACHE_S = 30.0


class ClockSync(Enum):
    SYNCHRONISED = "synchronised"
    UNSYNCHRONISED = "unsynchronised"
    UNKNOWN = "unknown"


def _adjtimex() -> ClockSync:
    """The kernel's own answer (any NTP daemon sets it). Read-only with modes=0, but the service's
    seccomp filter denies @clock, so inside the unit this gives UNKNOWN and the next source is used."""
    name = ctypes.util.find_library("c")
    if name is None:
        return ClockSync.UNKNOWN
    libc = ctypes.CDLL(name, use_errno=True)
    buf = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes (first int) = 0: read only
    rc = libc.adjtimex(buf)
    if rc < 0:
        return ClockSync.UNKNOWN
    return ClockSync.UNSYNCHRONISED if rc == _TIME_ERROR else ClockSync.SYNCHRONISED


def _timedatectl() -> ClockSync:
    exe = shutil.which("timedatectl")
    if exe is None:
        return ClockSync.UNKNOWN
    try:
        r = subprocess.run([exe, "show", "-p", "NTPSynchronized", "--value"],
                           capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ClockSync.UNKNOWN
    value = r.stdout.strip()
    if r.returncode != 0 or value not in ("yes", "no"):
        return ClockSync.UNKNOWN
    return ClockSync.SYNCHRONISED if value == "yes" else ClockSync.UNSYNCHRONISED


def clock_sync() -> ClockSync:
    """adjtimex, else timesyncd's flag file, else timedated (chrony); UNKNOWN if none answers."""
    state = _adjtimex()
    if state is not ClockSync.UNKNOWN:
        return state
    if TIMESYNCD_FLAG.exists():
        return ClockSync.SYNCHRONISED
    return _timedatectl()


_lock = threading.Lock()
_cached: tuple[float, ClockSync] | None = None


def clock_sync_cached() -> ClockSync:
    """clock_sync(), asked at most every 30 s: the status heartbeat must not spawn a process each time."""
    global _cached
    with _lock:
        now = time.monotonic()
        if _cached is None or now - _cached[0] >= _CACHE_S:
            _cached = (now, clock_sync())
        return _cached[1]
