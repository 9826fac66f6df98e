"""systemd notification protocol over the NOTIFY_SOCKET datagram socket (no extra dependency).

The watchdog is fed only while frames are actually processed: a stalled camera stops the pings
and systemd restarts the service (WatchdogSec= in systemd/lfr-edge.service).
"""

from __future__ import annotations

import os
import socket
import threading
import time


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        self._addr = ""
        if address:
            # A leading '@' is systemd's notation for the Linux abstract namespace.
            self._addr = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        watchdog_for_us = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Ping at half the interval, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval = int(usec) / 2e6 if watchdog_for_us else 0.0
        self._last_ping = 0.0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self._addr)
            return True
        except OSError:
            return False  # systemd gone or socket full: never take the camera loop down for it

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def frame_processed(self) -> None:
        """Called by the loop after each processed frame; rate-limited to the watchdog interval."""
        if self._sock is None:
            return
        now = time.monotonic()
        interval = self.watchdog_interval or 1.0
        with self._lock:
            if now - self._last_ping < interval:
                return
            self._last_ping = now
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
