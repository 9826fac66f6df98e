"""The console's own audit log: the device's hash-chained, signed format (edge.core.audit), signed by the back office.

Every decision, deletion by retention, account change and watchlist publication is one record,
followed at once by a signed checkpoint, so a reviewer's decision is covered by a signature the
moment it is stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.core.audit.log import AuditLog

AUDIT_DIR = "audit"

ALERT_REVIEWED = "alert_reviewed"
ALERT_DELETED = "alert_deleted"
REFERENCES_DELETED = "reference_images_deleted"
USER_ADDED = "user_added"
USER_DISABLED = "user_disabled"
WATCHLIST_ENROLLED = "watchlist_enrolled"
WATCHLIST_PUBLISHED = "watchlist_published"
CONSOLE_START = "console_start"


class ConsoleAudit:
    def __init__(
        self, data_dir: Path, signer: Ed25519PrivateKey | None, clock: Callable[[], float] = time.time
    ) -> None:
        self.dir = data_dir / AUDIT_DIR
        # A reviewer's decisions are kept for years, not the device's default of one.
        self.log = AuditLog(self.dir, signer, checkpoint_every=1_000_000, retention_days=3650.0, clock=clock)

    def record(self, kind: str, fields: dict[str, Any]) -> None:
        self.log.append(kind, fields)
        self.log.checkpoint()

    def close(self) -> None:
        self.log.close()
