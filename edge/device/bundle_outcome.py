"""The last bundle this device installed or refused, for its status heartbeat.

`watchlist publish --wait` in the back office reads it from the retained status: a refusal that
only reached the device's log left the operator believing a stale list was in force. The status is
republished at once after each outcome so the wait is not a heartbeat interval long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from edge.core.alert_message import iso_utc

EventHook = Callable[[str, dict[str, Any]], None]


class BundleOutcomes:
    def __init__(self, inner: EventHook | None, on_change: Callable[[], None] | None = None) -> None:
        self._inner = inner
        self.on_change = on_change
        self._last: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def hook(self, kind: str, fields: dict[str, Any]) -> None:
        """The store's event hook: passes every event on (the audit log), keeps installs and refusals."""
        if self._inner is not None:
            self._inner(kind, fields)
        if kind not in ("installed", "refused"):
            return
        last = {"result": kind, "time": iso_utc(time.time()), "source": fields.get("source")}
        if kind == "installed":
            last["version"] = fields.get("version")
        else:
            last["reason"] = fields.get("reason")
            last["message"] = str(fields.get("message", ""))[:300]
        with self._lock:
            self._last = last
        if self.on_change is not None:
            self.on_change()

    def last(self) -> dict[str, Any] | None:
        with self._lock:
            return dict(self._last) if self._last else None
