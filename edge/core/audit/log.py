"""Tamper-evident, append-only audit log: a hash chain of JSON lines with signed checkpoints.

Each record is one canonical JSON line (edge.core.signing's RFC 8785 form) holding `seq`, `time`
(RFC 3339 UTC, edge.core.timefmt), `kind`, `fields`, `prev_hash` and `hash` = sha256 over the
canonical bytes of the other five, so
editing, deleting, inserting or reordering a record breaks the chain at that record. A chain alone
can be recomputed by whoever rewrites the whole file, so every `checkpoint_every` records (and at
stop and at each segment end) a `checkpoint` record carries an Ed25519 signature by the device key
over the hash it follows (edge.core.signing, Context.AUDIT_CHECKPOINT); rewriting history then
needs the device's private key. Logs written before the RFC 8785 form (Python's sort_keys JSON, ASCII
escapes) still verify: see edge.core.audit.verify.

The log lives in `<data_dir>/audit/` as segments `segment-<first seq>.jsonl`. A new segment starts
with a `segment_start` record naming the previous segment's last seq and hash, so the chain stays
verifiable across files. Retention and the size cap are enforced only by deleting whole old segments,
and each deletion is itself a record (`audit_pruned`) so that a missing head is never silent.

Records never hold images, embeddings or any data about a person who did not match: `fields`
accepts only short scalars (and lists/mappings of them), so a crop or an embedding cannot be
logged even by mistake.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.core import signing
from edge.core.keys import ensure_private_dir, fsync_dir, key_id
from edge.core.signing import Context, canonical_json
from edge.core.timefmt import format_utc, parse_utc

log = logging.getLogger("lfr_edge.audit")

GENESIS_HASH = "0" * 64
RECORD_KEYS = frozenset({"seq", "time", "kind", "fields", "prev_hash", "hash"})
SEGMENT_RE = re.compile(r"^segment-(\d{12})\.jsonl$")
_HASH_DOMAIN = b"lfr-edge audit record v1\n"
# Longest string a record may hold: enough for a reason or an id, far too short for a JPEG or an
# embedding in any text encoding (a 128-d float32 vector is 684 base64 characters).
MAX_STRING = 400
MAX_ITEMS = 64
MIN_SEGMENT_BYTES = 4096

# Record kinds (the documented vocabulary; see docs/PRIVACY.md).
SERVICE_START = "service_start"
SERVICE_STOP = "service_stop"
CONFIG = "config"
MODELS = "models"
THRESHOLDS = "thresholds"
THRESHOLD_CHANGE = "threshold_change"
BELOW_FLOOR_OVERRIDE = "below_floor_override"
WATCHLIST_INSTALLED = "watchlist_installed"
WATCHLIST_REFUSED = "watchlist_refused"
WATCHLIST_EXPIRED = "watchlist_expired"
WATCHLIST_WIPED = "watchlist_wiped"
ALERT = "alert"
SPOOL_DROP = "spool_drop"
DEPLOYMENT_STOP = "deployment_stop"
DEPLOYMENT_RECORD = "deployment_record"
WIPE_ALL = "wipe_all"
CHECKPOINT = "checkpoint"
SEGMENT_START = "segment_start"
AUDIT_PRUNED = "audit_pruned"
AUDIT_RECOVERED = "audit_recovered"

Publish = Callable[[bytes], None]
Scalar = str | int | float | bool | None


class Signer(Protocol):
    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> Ed25519PublicKey: ...


def canonical(obj: Any) -> bytes:
    """The one byte form of a record: what is hashed and written (edge.core.signing's form)."""
    return canonical_json(obj)


def legacy_canonical(obj: Any) -> bytes:
    """The form records had before edge.core.signing (sort_keys, ASCII escapes, Python floats): read
    only by the verifier, so logs written by older releases still verify."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def record_hash(
    seq: int, t: str, kind: str, fields: dict[str, Any], prev_hash: str, form: Callable[[Any], bytes] = canonical
) -> str:
    body = {"seq": seq, "time": t, "kind": kind, "fields": fields, "prev_hash": prev_hash}
    return hashlib.sha256(_HASH_DOMAIN + form(body)).hexdigest()


def checkpoint_document(covers_seq: int, covers_hash: str) -> dict[str, Any]:
    """What a checkpoint signs (under Context.AUDIT_CHECKPOINT): the seq and hash it covers. Its
    canonical bytes are the same in the legacy form (ints and hex strings), so old checkpoints verify."""
    return {"seq": covers_seq, "hash": covers_hash}


def checkpoint_message(covers_seq: int, covers_hash: str) -> bytes:
    """The exact bytes an Ed25519 checkpoint signature covers (context + canonical document)."""
    return Context.AUDIT_CHECKPOINT.value + canonical_json(checkpoint_document(covers_seq, covers_hash))


def parse_iso(s: str) -> float:
    """A record's time (or a --since option) to unix seconds: RFC 3339 via edge.core.timefmt."""
    return parse_utc(s)


def segment_name(first_seq: int) -> str:
    return f"segment-{first_seq:012d}.jsonl"


def list_segments(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if SEGMENT_RE.match(p.name))


def _check_value(key: str, value: Any, depth: int = 0) -> Any:
    """Only short scalars: the type system of the log is what keeps faces out of it."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"audit field {key!r}: {value} is not a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise ValueError(f"audit field {key!r}: string of {len(value)} chars exceeds {MAX_STRING}")
        return value
    if depth < 3 and isinstance(value, list | tuple):
        if len(value) > MAX_ITEMS:
            raise ValueError(f"audit field {key!r}: {len(value)} items exceed {MAX_ITEMS}")
        return [_check_value(key, v, depth + 1) for v in value]
    if depth < 3 and isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise ValueError(f"audit field {key!r}: {len(value)} keys exceed {MAX_ITEMS}")
        return {str(k): _check_value(f"{key}.{k}", v, depth + 1) for k, v in value.items()}
    # bytes, numpy arrays and the like: exactly what must never reach the log
    raise TypeError(f"audit field {key!r}: {type(value).__name__} is not allowed in the audit log")


def check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    if len(fields) > MAX_ITEMS:
        raise ValueError(f"audit record has {len(fields)} fields, more than {MAX_ITEMS}")
    return {str(k): _check_value(str(k), v) for k, v in fields.items()}


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    time: str
    kind: str
    fields: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "fields": self.fields,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    def line(self) -> bytes:
        return canonical(self.to_dict())

    @property
    def t(self) -> float:
        return parse_iso(self.time)


def _as_signer(key: Any) -> Signer | None:
    """Accept an Ed25519 private key, or the DeviceKeys of edge.core.keys (its `.ed25519`)."""
    if key is None:
        return None
    if isinstance(key, Ed25519PrivateKey):
        return key
    inner = getattr(key, "ed25519", None)
    if isinstance(inner, Ed25519PrivateKey):
        return inner
    raise TypeError(f"audit signing key must be an Ed25519 private key, got {type(key).__name__}")


def _last_line(path: Path) -> tuple[bytes | None, int]:
    """The last complete line of a file and the byte length of a torn (unterminated) tail.

    Reads from the end (segments reach megabytes; records are a few hundred bytes).
    """
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        chunk = 1 << 16
        while True:
            start = max(0, size - chunk)
            f.seek(start)
            data = f.read(size - start)
            end = data.rfind(b"\n")
            torn = len(data) - (end + 1)
            if end < 0 and start > 0:
                chunk *= 4
                continue
            if end < 0:
                return None, torn
            begin = data.rfind(b"\n", 0, end)
            if begin >= 0 or start == 0:
                return data[begin + 1 : end], torn
            chunk *= 4


class AuditLog:
    """Append-only; safe to call from the camera loop, the alert publisher and the watchlist sync."""

    def __init__(
        self,
        directory: str | Path,
        signing_key: Any = None,
        *,
        checkpoint_every: int = 50,
        retention_days: float = 365.0,
        max_mb: float = 100.0,
        segment_bytes: int | None = None,
        publish: Publish | None = None,
        clock: Callable[[], float] = time.time,
        fsync: bool = True,
    ) -> None:
        self.dir = Path(directory)
        self._signer = _as_signer(signing_key)
        self.key_id = key_id(self._signer.public_key()) if self._signer else ""
        self.checkpoint_every = checkpoint_every
        self.retention_s = retention_days * 86400.0
        self.max_bytes = int(max_mb * 1024 * 1024)
        # Ten segments under the cap: pruning one drops at most a tenth of the history.
        self.segment_bytes = segment_bytes or max(MIN_SEGMENT_BYTES, self.max_bytes // 10)
        self.publish = publish
        self._clock = clock
        self._fsync = fsync
        self._lock = threading.RLock()
        self._closed = False
        ensure_private_dir(self.dir)
        self._next_seq = 0
        self._last_hash = GENESIS_HASH
        self._since_checkpoint = 0
        self._last_kind = ""
        self._segment: Path | None = None
        self._size = -1  # bytes of the current segment as we last left it (another writer changes it)
        self._segment_t0 = 0.0  # time of the current segment's first record (age-based rotation)
        # Other processes (a CLI command next to the service) may append too: one file lock
        # serialises writers, and each re-reads the tail when someone else wrote since.
        self._lock_fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._depth = 0
        with self._locked():
            pass
        if self._signer is None:
            log.warning("audit log without a signing key: checkpoints cannot be signed")

    # ----------------------------------------------------------------- opening

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise RuntimeError("audit log is closed")
            if self._depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                if self._depth == 1:
                    self._sync_tail()
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _sync_tail(self) -> None:
        segments = list_segments(self.dir)
        newest = segments[-1] if segments else None
        size = newest.stat().st_size if newest else -1
        if newest == self._segment and size == self._size:
            return
        self._next_seq, self._last_hash, self._last_kind = 0, GENESIS_HASH, ""
        self._since_checkpoint, self._segment = 0, None
        torn = self._load_tail(segments)
        if torn and self._segment is not None:
            self.append(AUDIT_RECOVERED, {"segment": self._segment.name, "discarded_bytes": torn})

    def _load_tail(self, segments: list[Path]) -> int:
        """Position after the last complete record; returns the bytes of a torn line it dropped."""
        if not segments:
            return 0
        self._segment = segments[-1]
        line, torn = _last_line(self._segment)
        if torn:
            # A crash in the middle of a write: drop the partial line and say so in the log itself.
            size = self._segment.stat().st_size
            with self._segment.open("r+b") as f:
                f.truncate(size - torn)
                f.flush()
                os.fsync(f.fileno())
        self._size = self._segment.stat().st_size
        if line is None:
            first = int(SEGMENT_RE.match(self._segment.name).group(1))  # type: ignore[union-attr]
            self._next_seq = first
            self._segment_t0 = self._clock()
            if len(segments) > 1:
                prev_line, _ = _last_line(segments[-2])
                if prev_line is not None:
                    self._last_hash = json.loads(prev_line)["hash"]
        else:
            last = json.loads(line)
            self._next_seq = int(last["seq"]) + 1
            self._last_hash = str(last["hash"])
            self._last_kind = str(last["kind"])
            self._since_checkpoint, self._segment_t0 = self._scan_segment(self._segment)
        return torn

    @staticmethod
    def _scan_segment(path: Path) -> tuple[int, float]:
        """Records since the last checkpoint, and the time of the segment's first record."""
        n, t0 = 0, 0.0
        with path.open("rb") as f:
            for i, raw in enumerate(f):
                rec = json.loads(raw)
                if i == 0:
                    t0 = parse_iso(rec["time"])
                n = 0 if rec.get("kind") == CHECKPOINT else n + 1
        return n, t0

    # ----------------------------------------------------------------- writing

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def last_hash(self) -> str:
        return self._last_hash

    def append(self, kind: str, fields: dict[str, Any] | None = None) -> Record:
        """Write one record (durably) and publish it; checkpoints follow automatically."""
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", kind):
            raise ValueError(f"audit record kind {kind!r} must be lower_snake_case")
        clean = check_fields(fields or {})
        with self._locked():
            self._rotate_if_needed()
            rec = self._write(kind, clean)
            if kind != CHECKPOINT:
                self._since_checkpoint += 1
                if self._since_checkpoint >= self.checkpoint_every:
                    self.checkpoint()
            return rec

    def _write(self, kind: str, fields: dict[str, Any]) -> Record:
        t = format_utc(self._clock())
        seq = self._next_seq
        h = record_hash(seq, t, kind, fields, self._last_hash)
        rec = Record(seq, t, kind, fields, self._last_hash, h)
        line = rec.line()
        if self._segment is None:
            self._segment = self.dir / segment_name(seq)
        new_file = not self._segment.exists()
        if new_file:
            self._segment_t0 = self._clock()
        fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line + b"\n")
            if self._fsync:
                os.fsync(fd)
            self._size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if new_file and self._fsync:
            fsync_dir(self.dir)
        self._next_seq = seq + 1
        self._last_hash = h
        self._last_kind = kind
        if kind == CHECKPOINT:
            self._since_checkpoint = 0
        self._publish(line)
        return rec

    def _publish(self, line: bytes) -> None:
        if self.publish is None:
            return
        try:
            self.publish(line)
        except Exception as e:  # the local record is what counts; publishing is best effort here
            log.warning("audit record not published: %s", type(e).__name__)

    def checkpoint(self) -> Record | None:
        """Sign the current head; a no-op without a key or when the head is already signed."""
        with self._locked():
            if self._signer is None or self._next_seq == 0:
                return None
            if self._last_kind == CHECKPOINT:
                return None
            covers = self._next_seq - 1
            sig = signing.sign_document(
                Context.AUDIT_CHECKPOINT, checkpoint_document(covers, self._last_hash), self._signer
            )
            fields = {
                "covers_seq": covers,
                "covers_hash": self._last_hash,
                "key_id": self.key_id,
                "signature": base64.b64encode(sig).decode(),
            }
            return self._write(CHECKPOINT, fields)

    # ----------------------------------------------------------------- rotation and pruning

    def _rotate_if_needed(self) -> None:
        # _sync_tail has just brought _size up to date with the segment on disk: no stat needed.
        if self._segment is None or self._size <= 0:
            return
        # Age counts too: retention can only drop whole segments, so none may span much of it.
        too_old = self._clock() - self._segment_t0 > self.retention_s / 10
        if self._size < self.segment_bytes and not too_old:
            return
        self.checkpoint()  # each closed segment ends signed
        previous = self._segment
        prev_seq, prev_hash = self._next_seq - 1, self._last_hash
        self._segment = self.dir / segment_name(self._next_seq)
        self._write(
            SEGMENT_START,
            {"previous_segment": previous.name, "previous_last_seq": prev_seq, "previous_last_hash": prev_hash},
        )
        self._since_checkpoint += 1
        self._prune()

    def _prune(self) -> None:
        segments = list_segments(self.dir)
        if len(segments) < 2:
            return
        now = self._clock()
        total = sum(p.stat().st_size for p in segments)
        doomed: list[Path] = []
        reason = ""
        for seg in segments[:-1]:  # never the segment being written
            line, _ = _last_line(seg)
            last_t = parse_iso(json.loads(line)["time"]) if line else 0.0
            if now - last_t > self.retention_s:
                doomed.append(seg)
                reason = "retention"
            elif total > self.max_bytes:
                doomed.append(seg)
                reason = reason or "size"
            else:
                break
            total -= seg.stat().st_size
        if not doomed:
            return
        last_line, _ = _last_line(doomed[-1])
        last: dict[str, Any] = json.loads(last_line) if last_line else {"seq": -1, "hash": GENESIS_HASH}
        first = int(SEGMENT_RE.match(doomed[0].name).group(1))  # type: ignore[union-attr]
        for seg in doomed:
            seg.unlink()
        if self._fsync:
            fsync_dir(self.dir)
        self._write(
            AUDIT_PRUNED,
            {
                "segments": [p.name for p in doomed][:MAX_ITEMS],
                "first_seq": first,
                "last_seq": int(last["seq"]),
                "last_hash": str(last["hash"]),
                "reason": reason,
                "retention_days": round(self.retention_s / 86400.0, 3),
                "max_mb": round(self.max_bytes / 1048576.0, 3),
            },
        )
        self._since_checkpoint += 1

    # ----------------------------------------------------------------- closing

    def close(self) -> None:
        """Sign the head so that nothing written before stop can be rewritten unnoticed."""
        with self._lock:
            if self._closed:
                return
            with self._locked():
                self.checkpoint()
            self._closed = True
            os.close(self._lock_fd)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_segment(path: Path) -> Iterator[Record]:
    """Every parseable record of one segment file, up to a torn last line."""
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                d = json.loads(raw)
                rec = Record(
                    int(d["seq"]), str(d["time"]), str(d["kind"]), dict(d["fields"]),
                    str(d["prev_hash"]), str(d["hash"]),
                )
            except (ValueError, KeyError, TypeError):
                continue
            yield rec


def iter_records(directory: str | Path) -> Iterator[Record]:
    """Every parseable record in order (for reports; `verify` is what judges integrity)."""
    for seg in list_segments(Path(directory)):
        yield from iter_segment(seg)


def verify_signature(pub: Ed25519PublicKey, covers_seq: int, covers_hash: str, signature_b64: str) -> bool:
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except ValueError:
        return False
    return signing.verify_document(
        Context.AUDIT_CHECKPOINT, checkpoint_document(covers_seq, covers_hash), signature, pub
    )
