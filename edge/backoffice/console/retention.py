"""Retention: reviewed alerts and their crops are deleted when the force's policy says, and each deletion is audited.

"Not a match" goes after `retention.false_alert_days` from the decision, "confirmed match" and
"unsure" after `retention.confirmed_days`. Unreviewed alerts are kept until someone decides:
deleting an alert nobody has looked at would defeat the review.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import or_, select

from edge.backoffice.console import audit as ca
from edge.backoffice.console.config import RetentionSettings
from edge.backoffice.console.models import AlertRow, Decision
from edge.backoffice.console.store import ConsoleStore

log = logging.getLogger("lfr_edge.console")
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class SweepResult:
    deleted: int
    crops_removed: int


def sweep(store: ConsoleStore, policy: RetentionSettings) -> SweepResult:
    now = store.clock()
    false_before = now - policy.false_alert_days * DAY
    confirmed_before = now - policy.confirmed_days * DAY
    deleted = crops = 0
    with store.sessions() as s:
        rows = s.scalars(
            select(AlertRow).where(
                or_(
                    (AlertRow.decision == Decision.NOT_A_MATCH) & (AlertRow.decided_at < false_before),
                    AlertRow.decision.in_((Decision.CONFIRMED, Decision.UNSURE))
                    & (AlertRow.decided_at < confirmed_before),
                )
            )
        ).all()
        for row in rows:
            # Audit first: a deletion that happened must never be missing from the log.
            store.audit.record(
                ca.ALERT_DELETED,
                {
                    "alert_id": row.alert_id,
                    "device_id": row.device_id,
                    "decision": row.decision.value,
                    "reason": "retention",
                    "days": policy.false_alert_days if row.decision is Decision.NOT_A_MATCH else policy.confirmed_days,
                },
            )
            if row.crop_file:
                path = store.crops / row.crop_file
                if path.exists():
                    path.unlink()
                    crops += 1
            s.delete(row)
            s.commit()
            deleted += 1
    if deleted:
        log.info("retention: deleted %d reviewed alert(s), %d crop file(s)", deleted, crops)
    return SweepResult(deleted, crops)
