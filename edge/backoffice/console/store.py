"""Durable storage of verified alerts, device status and deployment records, and the review queue.

An alert is stored crop first (written and fsynced under <data_dir>/crops), row second; only after
the row is committed is the alert "stored", and only then is it acknowledged to the device: `store_alert`
returns STORED (or DUPLICATE for one already stored) and the listener then sends the signed
acknowledgement (edge/backoffice/console/ingest.py, edge/backoffice/listener.py). Crops are named by a hash of the alert id, never by anything the
device chose, so no message can steer a file path.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from edge.backoffice.console import audit as ca
from edge.backoffice.console.config import MAX_CROP_BYTES
from edge.backoffice.console.models import AlertRow, Decision, DeploymentRow, DeviceRow, ReferenceImageRow
from edge.core.alert_message import VerifiedAlert
from edge.core.audit.log import parse_iso
from edge.core.keys import fsync_dir

log = logging.getLogger("lfr_edge.console")

CROPS_DIR = "crops"
REFERENCES_DIR = "references"
MAX_NOTE = 400  # the audit log's longest string


class Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class StoreResult:
    outcome: Outcome
    reason: str = ""
    row_id: int | None = None


@dataclass(frozen=True, slots=True)
class AlertFilter:
    device_id: str | None = None
    decision: Decision | None = None
    since: float | None = None  # unix seconds, inclusive
    until: float | None = None  # unix seconds, exclusive


@dataclass(frozen=True, slots=True)
class AlertPage:
    rows: Sequence[AlertRow]
    total: int
    page: int
    pages: int


def crop_name(alert_id: str) -> str:
    return hashlib.sha256(alert_id.encode("utf-8")).hexdigest()[:40] + ".jpg"


def write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _text(body: dict[str, Any], key: str, limit: int) -> str | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError(f"body.{key} is not a string")
    if len(v) > limit:
        raise ValueError(f"body.{key} is {len(v)} characters (at most {limit})")
    return v


def _num(body: dict[str, Any], key: str) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"body.{key} is not a number")
    return float(v)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(body: dict[str, Any], key: str) -> int | None:
    v = _num(body, key)
    return None if v is None else int(v)


class ConsoleStore:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        data_dir: Path,
        audit: ca.ConsoleAudit,
        clock: Callable[[], float] = time.time,
        page_size: int = 50,
    ) -> None:
        self.sessions = sessions
        self.data_dir = data_dir
        self.crops = data_dir / CROPS_DIR
        self.refs_dir = data_dir / REFERENCES_DIR
        for d in (data_dir, self.crops, self.refs_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.audit = audit
        self.clock = clock
        self.page_size = page_size

    # ----------------------------------------------------------------- ingest

    def store_alert(self, alert: VerifiedAlert, key_id: str) -> StoreResult:
        try:
            row = self._row(alert, key_id)
        except ValueError as e:
            return StoreResult(Outcome.REFUSED, str(e))
        face = alert.face_jpeg
        if face is not None and len(face) > MAX_CROP_BYTES:
            return StoreResult(Outcome.REFUSED, f"face crop of {len(face)} bytes exceeds {MAX_CROP_BYTES}")
        if face is not None and not face.startswith(b"\xff\xd8"):
            return StoreResult(Outcome.REFUSED, "face crop is not a JPEG")
        with self.sessions() as s:
            if s.scalar(select(AlertRow.id).where(AlertRow.alert_id == alert.alert_id)) is not None:
                return StoreResult(Outcome.DUPLICATE)
            if face is not None:
                row.crop_file = crop_name(alert.alert_id)
                write_durably(self.crops / row.crop_file, face)
            s.add(row)
            try:
                s.commit()
            except IntegrityError:  # the same alert stored concurrently
                s.rollback()
                return StoreResult(Outcome.DUPLICATE)
            row_id = row.id
        return StoreResult(Outcome.STORED, row_id=row_id)

    def _row(self, alert: VerifiedAlert, key_id: str) -> AlertRow:
        for what, value in (("alert_id", alert.alert_id), ("device_id", alert.device_id), ("camera", alert.camera)):
            if len(value) > 128:
                raise ValueError(f"{what} is {len(value)} characters (at most 128)")
        try:
            t = parse_iso(alert.time)
        except ValueError:
            raise ValueError(f"time {alert.time[:40]!r} is not an ISO-8601 time") from None
        body = alert.body or {}
        return AlertRow(
            alert_id=alert.alert_id,
            device_id=alert.device_id,
            camera=alert.camera,
            time=t,
            time_text=alert.time[:40],
            received_at=self.clock(),
            sealed=alert.sealed,
            signature_key_id=key_id,
            subject_id=_text(body, "subject_id", 256),
            category=_text(body, "category", 64),
            priority=_int(body, "priority"),
            score=_num(body, "score"),
            threshold=_num(body, "threshold"),
            margin=_num(body, "margin"),
            runner_up=_text(body, "runner_up", 256),
            track_id=_int(body, "track_id"),
            watchlist_version=_int(body, "watchlist_version"),
            decision=Decision.UNREVIEWED,
        )

    def update_status(self, device_id: str, status: dict[str, Any]) -> None:
        """Merge a status message: fields it lacks keep their last known value (the Last Will says only "offline")."""
        alerts = status.get("alerts") if isinstance(status.get("alerts"), dict) else None
        wl = status.get("watchlist") if isinstance(status.get("watchlist"), dict) else None
        version = status.get("watchlist_version", wl.get("version") if wl else None)
        expires = wl.get("expires_at") if wl else status.get("watchlist_expires")
        pending = alerts.get("pending") if alerts else None
        raised = alerts.get("raised") if alerts else status.get("alerts")
        with self.sessions() as s:
            row = s.get(DeviceRow, device_id)
            if row is None:
                row = DeviceRow(device_id=device_id, status_json="{}")
                s.add(row)
            row.state = str(status.get("state", "unknown"))[:16]
            row.last_seen = self.clock()
            if _is_int(version):
                row.watchlist_version = version
            if expires is not None:
                row.watchlist_expires = str(expires)[:40]
            if _is_int(pending):
                row.spool_depth = pending
            if _is_int(raised):
                row.alerts_raised = raised
            merged = {**json.loads(row.status_json or "{}"), **status}
            row.status_json = json.dumps(merged, default=str)[:20000]
            s.commit()

    def add_deployment(self, device_id: str, record: dict[str, Any]) -> bool:
        digest = (
            str(record.get("hash", ""))[:64] or hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
        )
        with self.sessions() as s:
            if s.scalar(select(DeploymentRow.id).where(DeploymentRow.record_hash == digest)) is not None:
                return False
            seq = record.get("seq")
            s.add(
                DeploymentRow(
                    device_id=device_id,
                    seq=seq if isinstance(seq, int) else -1,
                    record_hash=digest,
                    received_at=self.clock(),
                    record_json=json.dumps(record.get("fields", record), default=str)[:100000],
                )
            )
            try:
                s.commit()
            except IntegrityError:
                return False
        return True

    # ----------------------------------------------------------------- queries

    def _where(self, f: AlertFilter) -> list[Any]:
        cond: list[Any] = []
        if f.device_id:
            cond.append(AlertRow.device_id == f.device_id)
        if f.decision is not None:
            cond.append(AlertRow.decision == f.decision)
        if f.since is not None:
            cond.append(AlertRow.time >= f.since)
        if f.until is not None:
            cond.append(AlertRow.time < f.until)
        return cond

    def queue(self, f: AlertFilter, page: int = 1) -> AlertPage:
        """Unreviewed first, newest first within each group."""
        cond = self._where(f)
        unreviewed_first = case((AlertRow.decision == Decision.UNREVIEWED, 0), else_=1)
        with self.sessions() as s:
            total = s.scalar(select(func.count(AlertRow.id)).where(*cond)) or 0
            pages = max(1, -(-total // self.page_size))
            page = min(max(1, page), pages)
            rows = s.scalars(
                select(AlertRow)
                .where(*cond)
                .order_by(unreviewed_first, AlertRow.time.desc(), AlertRow.id.desc())
                .offset((page - 1) * self.page_size)
                .limit(self.page_size)
            ).all()
        return AlertPage(rows, total, page, pages)

    def newer_than(self, f: AlertFilter, after_id: int, limit: int = 200) -> Sequence[AlertRow]:
        with self.sessions() as s:
            return s.scalars(
                select(AlertRow).where(AlertRow.id > after_id, *self._where(f)).order_by(AlertRow.id).limit(limit)
            ).all()

    def max_id(self) -> int:
        with self.sessions() as s:
            return s.scalar(select(func.max(AlertRow.id))) or 0

    def alert(self, row_id: int) -> AlertRow | None:
        with self.sessions() as s:
            return s.get(AlertRow, row_id)

    def device_ids(self) -> list[str]:
        with self.sessions() as s:
            return sorted(
                set(s.scalars(select(AlertRow.device_id).distinct())) | set(s.scalars(select(DeviceRow.device_id)))
            )

    def devices(self) -> Sequence[DeviceRow]:
        with self.sessions() as s:
            return s.scalars(select(DeviceRow).order_by(DeviceRow.device_id)).all()

    def deployments(self, limit: int = 500) -> Sequence[DeploymentRow]:
        with self.sessions() as s:
            return s.scalars(select(DeploymentRow).order_by(DeploymentRow.received_at.desc()).limit(limit)).all()

    def references(self, subject_id: str | None) -> Sequence[ReferenceImageRow]:
        if not subject_id:
            return []
        with self.sessions() as s:
            return s.scalars(
                select(ReferenceImageRow)
                .where(ReferenceImageRow.subject_id == subject_id)
                .order_by(ReferenceImageRow.watchlist_version.desc(), ReferenceImageRow.id)
            ).all()

    def reference(self, ref_id: int) -> ReferenceImageRow | None:
        with self.sessions() as s:
            return s.get(ReferenceImageRow, ref_id)

    # ----------------------------------------------------------------- review

    def decide(self, row_id: int, decision: Decision, officer: str, note: str) -> AlertRow | None:
        if decision is Decision.UNREVIEWED:
            raise ValueError("a review decides: confirmed, not a match or unsure")
        note = note.strip()[:MAX_NOTE]
        with self.sessions() as s:
            row = s.get(AlertRow, row_id)
            if row is None:
                return None
            previous = row.decision
            row.decision, row.decided_by, row.decided_at, row.note = decision, officer, self.clock(), note or None
            s.commit()
        self.audit.record(
            ca.ALERT_REVIEWED,
            {
                "alert_id": row.alert_id,
                "device_id": row.device_id,
                "subject_id": row.subject_id,
                "decision": decision.value,
                "previous": previous.value,
                "officer": officer,
                "note": note,
            },
        )
        return row
