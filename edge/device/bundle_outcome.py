"""The last bundle this device installed or refused, for its status heartbeat.

`watchlist publish --wait` in the back office reads it from the retained status: a refusal that
only reached the device's log left the operator believing a stale list was in force. The status is
republished at once after each outcome so the wait is not a heartbeat interval long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from edge.core.timefmt import format_utc

EventHook = Callable[[str, dict[str, Any]], None]


class BundleResult(Enum):
    INSTALLED = "installed"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class BundleOutcome:
    result: BundleResult
    time: float
    source: str | None
    version: int | None = None  # INSTALLED
    reason: str | None = None  # REFUSED: the BundleError reason
    message: str = ""  # REFUSED: its one line, cut to 300 characters

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"result": self.result.value, "time": format_utc(self.time), "source": self.source}
        if self.result is BundleResult.INSTALLED:
            out["version"] = self.version
        else:
            out["reason"] = self.reason
            out["message"] = self.message
        return out


class BundleOutcomes:
    def __init__(self, inner: EventHook | None, on_change: Callable[[], None] | None = None) -> None:
        self._inner = inner
        self.on_change = on_change
        self._last: BundleOutcome | None = None
        self._lock = threading.Lock()

    def hook(self, kind: str, fields: dict[str, Any]) -> None:
        """The store's event hook: passes every event on (the audit log), keeps installs and refusals."""
        if self._inner is not None:
            self._inner(kind, fields)
        try:
            result = BundleResult(kind)
        except ValueError:
            return  # wiped, expired, ...: not a bundle outcome
        source = fields.get("source")
        version = fields.get("version")
        reason = fields.get("reason")
        outcome = BundleOutcome(
            result,
            time.time(),
            str(source) if source is not None else None,
            version=version if isinstance(version, int) and result is BundleResult.INSTALLED else None,
            reason=str(reason) if reason is not None and result is BundleResult.REFUSED else None,
            message=str(fields.get("message", ""))[:300] if result is BundleResult.REFUSED else "",
        )
        with self._lock:
            self._last = outcome
        if self.on_change is not None:
            self.on_change()

    def last(self) -> BundleOutcome | None:
        with self._lock:
            return self._last
