"""Retention: reviewed alerts and their crops are deleted when the force's policy says, and each deletion is audited.

"Not a match" goes after `retention.false_alert_days` from the decision, "confirmed match" and
"unsure" after `retention.confirmed_days`. Unreviewed alerts are kept until someone decides:
deleting an alert nobody has looked at would defeat the review. The custody images kept for review
of a watchlist go `retention.confirmed_days` after that list expired, once no stored alert raised
under it remains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import or_, select

from edge.backoffice.console import audit as ca
from edge.backoffice.console.config import RetentionSettings
from edge.backoffice.console.models import AlertRow, Decision, ReferenceImageRow, WatchlistRow
from edge.backoffice.console.store import ConsoleStore

log = logging.getLogger("lfr_edge.console")
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class SweepResult:
    deleted: int
    crops_removed: int
    references_removed: int = 0


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
    refs = _sweep_references(store, now - policy.confirmed_days * DAY)
    if deleted or refs:
        log.info(
            "retention: deleted %d reviewed alert(s), %d crop file(s), %d reference image(s)", deleted, crops, refs
        )
    return SweepResult(deleted, crops, refs)


def _sweep_references(store: ConsoleStore, expired_before: float) -> int:
    removed = 0
    with store.sessions() as s:
        lists = s.scalars(select(WatchlistRow).where(WatchlistRow.expires_at < expired_before)).all()
        for wl in lists:
            in_use = s.scalar(select(AlertRow.id).where(AlertRow.watchlist_version == wl.version).limit(1))
            refs = s.scalars(select(ReferenceImageRow).where(ReferenceImageRow.watchlist_version == wl.version)).all()
            if in_use is not None or not refs:
                continue
            store.audit.record(
                ca.REFERENCES_DELETED, {"watchlist_version": wl.version, "images": len(refs), "reason": "retention"}
            )
            for ref in refs:
                (store.refs_dir / ref.file).unlink(missing_ok=True)
                s.delete(ref)
                removed += 1
            s.commit()
    return removed
