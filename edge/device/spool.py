"""The outbound spool: every alert (and audit record) is on disk before it is published.

SQLite in WAL mode, synchronous=FULL so a row survives a power cut once `enqueue` returns. Each row's
topic and payload are encrypted with the device storage key (AES-256-GCM, edge.core.keys.encrypt_at_rest);
only the kind ("alert", "audit") and the creation time are in the clear, for the cap and the TTL.
Audit rows are deleted on the broker's PUBACK. Alert rows carry their alert id (`ref`, a random
UUID that is in clear on the wire anyway) and are deleted only when the back office acknowledges
them end to end (`acknowledge`, edge/core/alert_ack.py); the publisher re-sends them until then.
Past `max_rows` the oldest rows are dropped, past `ttl_s` expired rows are dropped; either way the
loss is counted per kind and reason (persisted in the same database) and reported through
`on_drop`, never silent. A dropped alert may already have reached the back office (it was sent,
its acknowledgement had not come back): its id is kept as a tombstone, and an acknowledgement that
arrives later moves it from "dropped" to "acknowledged", so the counts match what the back office
holds. An alert unacknowledged past the overdue time is flagged once (`mark_overdue`), persisted,
so it is audited once even across restarts.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.core.keys import CryptoError, decrypt_at_rest, encrypt_at_rest

log = logging.getLogger("lfr_edge.spool")

DropCallback = Callable[[str, str, int], None]  # (kind, reason, count)
_AAD = b"lfr-edge spool v1|"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    blob BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dropped_refs (ref TEXT PRIMARY KEY, reason TEXT NOT NULL, at REAL NOT NULL);
"""
# Spools written before end-to-end acknowledgement lack these columns; added in place at open.
_COLUMNS = (("ref", "TEXT"), ("overdue", "INTEGER NOT NULL DEFAULT 0"))
_MAX_TOMBSTONES = 100_000  # ids of dropped alerts remembered for a late acknowledgement


@dataclass(frozen=True, slots=True)
class SpoolRow:
    id: int
    created: float
    kind: str
    topic: str
    payload: bytes
    ref: str | None = None  # the alert id, for alert rows


@dataclass(frozen=True, slots=True)
class AckOutcome:
    acknowledged: int  # rows that were waiting and are now gone
    late: int  # alerts the spool had dropped (cap, ttl) that the back office had stored after all


@dataclass(frozen=True, slots=True)
class AwaitingAck:
    count: int  # alerts in the spool, not yet acknowledged by the back office
    oldest_created: float | None  # unix time the oldest of them was raised
    overdue: int  # of these, how many are past the overdue time


class Spool:
    def __init__(
        self,
        path: Path,
        key: bytes,
        max_rows: int = 10_000,
        ttl_s: float = 7 * 24 * 3600.0,
        on_drop: DropCallback | None = None,
    ) -> None:
        self.path = path
        self._key = key
        self.max_rows = max_rows
        self.ttl_s = ttl_s
        self.on_drop = on_drop
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Created 0600 up front: SQLite gives its -wal and -shm files the database's mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        have = {str(r[1]) for r in self._db.execute("PRAGMA table_info(spool)")}
        for name, decl in _COLUMNS:
            if name not in have:
                self._db.execute(f"ALTER TABLE spool ADD COLUMN {name} {decl}")
        self._db.execute("CREATE INDEX IF NOT EXISTS spool_ref ON spool(ref)")
        self._count = int(self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])
        self._backfill_refs()

    def _backfill_refs(self) -> None:
        """Alert rows spooled by a version without end-to-end acknowledgement carry no alert id; read
        it from the (signed) payload once, so the back office's acknowledgement can name them."""
        rows = self._db.execute(
            "SELECT id, created, kind, blob, ref FROM spool WHERE kind = 'alert' AND ref IS NULL"
        ).fetchall()
        for row in self._decode(rows):
            try:
                alert_id = json.loads(row.payload).get("alert_id")
            except (ValueError, AttributeError):
                alert_id = None
            if isinstance(alert_id, str) and alert_id:
                self._db.execute("UPDATE spool SET ref = ? WHERE id = ?", (alert_id, row.id))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ----------------------------------------------------------------------- writing

    def enqueue(self, topic: str, payload: bytes, kind: str = "alert", ref: str | None = None) -> int:
        """Store durably and return the row id; drops (and counts) the oldest rows past the cap."""
        t = topic.encode()
        blob = encrypt_at_rest(self._key, struct.pack(">H", len(t)) + t + payload, _AAD + kind.encode())
        dropped: dict[str, int] = {}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                excess = self._count + 1 - self.max_rows
                if excess > 0:
                    dropped = self._drop_where("id IN (SELECT id FROM spool ORDER BY id LIMIT ?)", (excess,), "cap")
                cur = self._db.execute(
                    "INSERT INTO spool (created, kind, blob, ref) VALUES (?, ?, ?, ?)", (time.time(), kind, blob, ref)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count += 1 - sum(dropped.values())
            row_id = int(cur.lastrowid or 0)
        self._report(dropped, "cap")
        return row_id

    def _drop_where(self, where: str, args: tuple[object, ...], reason: str) -> dict[str, int]:
        """Inside a transaction: delete matching rows and bump the persisted counters; {kind: n}."""
        by_kind = {
            str(k): int(n)
            for k, n in self._db.execute(f"SELECT kind, COUNT(*) FROM spool WHERE {where} GROUP BY kind", args)
        }
        if by_kind:
            now = time.time()
            self._db.executemany(
                "INSERT OR REPLACE INTO dropped_refs (ref, reason, at) VALUES (?, ?, ?)",
                [
                    (str(r), reason, now)
                    for (r,) in self._db.execute(
                        f"SELECT ref FROM spool WHERE ({where}) AND kind = 'alert' AND ref IS NOT NULL", args
                    )
                ],
            )
            self._db.execute(
                "DELETE FROM dropped_refs WHERE ref IN "
                "(SELECT ref FROM dropped_refs ORDER BY at DESC LIMIT -1 OFFSET ?)",
                (_MAX_TOMBSTONES,),
            )
            self._db.execute(f"DELETE FROM spool WHERE {where}", args)
            for kind, n in by_kind.items():
                self._db.execute(
                    "INSERT INTO counters (name, value) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    (f"dropped.{kind}.{reason}", n),
                )
        return by_kind

    def _report(self, dropped: dict[str, int], reason: str) -> None:
        for kind, n in dropped.items():
            log.warning("spool: dropped %d %s record(s) (%s)", n, kind, reason)
            if self.on_drop is not None:
                try:
                    self.on_drop(kind, reason, n)
                except Exception:
                    log.exception("spool: on_drop callback failed")

    def delete(self, row_id: int) -> bool:
        return self.delete_many([row_id]) == 1

    def delete_many(self, row_ids: list[int]) -> int:
        """Delete acknowledged rows in one transaction (one fsync for a burst of PUBACKs)."""
        if not row_ids:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = sum(
                    self._db.execute("DELETE FROM spool WHERE id = ?", (i,)).rowcount for i in row_ids
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count -= gone
        return gone

    def acknowledge(self, refs: list[str]) -> AckOutcome:
        """The back office has these alerts durably: delete them (one transaction, one fsync).

        An id the spool no longer holds but had dropped is counted as acknowledged after all, and
        taken off the dropped count: the back office has it."""
        acked = late = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for ref in refs:
                    gone = self._db.execute("DELETE FROM spool WHERE kind = 'alert' AND ref = ?", (ref,)).rowcount
                    if gone:
                        acked += gone
                        continue
                    row = self._db.execute("SELECT reason FROM dropped_refs WHERE ref = ?", (ref,)).fetchone()
                    if row is None:
                        continue  # acknowledged twice: already gone
                    self._db.execute("DELETE FROM dropped_refs WHERE ref = ?", (ref,))
                    self._bump(f"dropped.alert.{row[0]}", -1)
                    self._bump("acknowledged_after_drop.alert", 1)
                    late += 1
                if acked + late:
                    self._bump("acknowledged.alert", acked + late)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count -= acked
        return AckOutcome(acked, late)

    def _bump(self, name: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    def awaiting_ack(self) -> AwaitingAck:
        with self._lock:
            n, oldest, overdue = self._db.execute(
                "SELECT COUNT(*), MIN(created), COALESCE(SUM(overdue), 0) FROM spool WHERE kind = 'alert'"
            ).fetchone()
        return AwaitingAck(int(n), None if oldest is None else float(oldest), int(overdue))

    def mark_overdue(self, cutoff: float) -> list[tuple[str, float]]:
        """Flag alerts raised before `cutoff` and still unacknowledged; returns (alert id, created) of
        those flagged now, each exactly once over the spool's life."""
        with self._lock:
            query = "SELECT id, ref, created FROM spool WHERE kind = 'alert' AND overdue = 0 AND created < ?"
            if not self._db.execute(query, (cutoff,)).fetchone():
                return []  # the usual case, checked every second: no write transaction, no fsync
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(query, (cutoff,)).fetchall()
                self._db.executemany("UPDATE spool SET overdue = 1 WHERE id = ?", [(r[0],) for r in rows])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [(str(r[1] or ""), float(r[2])) for r in rows]

    def drop(self, row_id: int, reason: str) -> None:
        """Give up on one row (e.g. the broker refused it) and count why."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            dropped = self._drop_where("id = ?", (row_id,), reason)
            self._db.execute("COMMIT")
            self._count -= sum(dropped.values())
        self._report(dropped, reason)

    def expire(self, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - self.ttl_s
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            dropped = self._drop_where("created < ?", (cutoff,), "ttl")
            self._db.execute("COMMIT")
            self._count -= sum(dropped.values())
        self._report(dropped, "ttl")
        return sum(dropped.values())

    # ----------------------------------------------------------------------- reading

    def fetch_after(self, after_id: int, limit: int) -> list[SpoolRow]:
        """Oldest first. A row that no longer decrypts (storage key replaced) is dropped and counted."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, created, kind, blob, ref FROM spool WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return self._decode(rows)

    def fetch_ids(self, row_ids: list[int]) -> list[SpoolRow]:
        """The rows among `row_ids` still in the spool (acknowledged or dropped ones are gone)."""
        with self._lock:
            rows = [
                r
                for i in row_ids
                for r in self._db.execute("SELECT id, created, kind, blob, ref FROM spool WHERE id = ?", (i,))
            ]
        return self._decode(rows)

    def _decode(self, rows: list[Any]) -> list[SpoolRow]:
        out: list[SpoolRow] = []
        for row_id, created, kind, blob, ref in rows:
            try:
                plain = decrypt_at_rest(self._key, bytes(blob), _AAD + str(kind).encode(), "spool row")
                (n,) = struct.unpack(">H", plain[:2])
                topic = plain[2 : 2 + n].decode()
                out.append(SpoolRow(int(row_id), float(created), str(kind), topic, plain[2 + n :], None if ref is None else str(ref)))
            except (CryptoError, struct.error, UnicodeDecodeError) as e:
                log.error("spool: row %d cannot be read (%s); dropping it", row_id, e)
                self.drop(int(row_id), "unreadable")
        return out

    def pending(self) -> int:
        with self._lock:
            return self._count

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {str(k): int(v) for k, v in self._db.execute("SELECT name, value FROM counters")}

    def dropped_total(self) -> int:
        return sum(v for k, v in self.counters().items() if k.startswith("dropped."))
