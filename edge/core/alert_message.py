"""Alert messages: built from a MatchEvent, signed by the device, optionally sealed to the back office.

Wire format (docs/ALERTS.md, docs/alert.schema.json): one JSON object

    {"v":1, "type":"alert", "alert_id", "time", "device_id", "camera",
     "body": {...}                      -- or, when sealed --
     "sealed": {"alg", "to", "data"},
     "sig": {"alg":"Ed25519", "key_id", "value"}}

What is signed is the object without "sig", through edge.core.signing: its RFC 8785 (JCS) canonical
bytes under the context Context.ALERT (Context.STATUS for a status), so an alert signature is never
valid for a status, an audit checkpoint or a command acknowledgement signed with the same device key.
The wire bytes are the canonical form too. Times are edge.core.timefmt's RFC 3339 UTC (…123Z).

Sealing encrypts the canonical bytes of the body with edge.core.keys.seal (X25519 + HKDF-SHA256 +
AES-256-GCM) to the back office's X25519 key, with the alert_id and device_id as associated data so
a sealed body cannot be moved under another alert. Routing fields stay readable by the broker.
"""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edge.core.keys import CryptoError, key_id, seal, unseal
from edge.core.signing import Context, canonical_json, sign_document, verify_document
from edge.core.timefmt import format_utc
from edge.core.types import MatchEvent

VERSION = 1
SEAL_INFO = b"lfr-edge alert body v1"
SEAL_ALG = "X25519-HKDF-SHA256-AES256GCM"
HEADER_FIELDS = ("v", "type", "alert_id", "time", "device_id", "camera")
BODY_FIELDS = (
    "subject_id", "category", "priority", "score", "margin", "threshold", "track_id", "bbox",
    "frames_fused", "frame_seq", "watchlist_version", "models",
)  # fmt: skip


# Larger messages are refused before parsing: an alert with a face crop is tens of kilobytes.
MAX_MESSAGE_BYTES = 4 << 20
STATUS_TYPE = "status"
PROTOCOL_FIELDS = ("v", "type", "sig")


class AlertRejected(Exception):
    """An alert (or status) that must not be shown: malformed, unsigned, forged, tampered, stale or
    from an unknown device."""


# --------------------------------------------------------------------------- building


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise AlertRejected(f"{what} is not a base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        raise AlertRejected(f"{what} is not valid base64") from None
    # Unused low bits of the last character would let two strings decode alike: allow one form only.
    if _b64(data) != text:
        raise AlertRejected(f"{what} is not in canonical base64")
    return data


def _seal_aad(alert_id: str, device_id: str) -> bytes:
    return f"{alert_id}|{device_id}".encode()


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    payload: bytes  # the wire JSON
    t_match: float  # MatchEvent.t_wall, for latency figures


def alert_body(event: MatchEvent, detector: str, embedder: str, include_crop: bool) -> dict[str, Any]:
    m = event.match
    body: dict[str, Any] = {
        "subject_id": m.subject.subject_id,
        "category": m.subject.category,
        "priority": int(m.subject.priority),
        "score": round(float(m.score), 4),
        "margin": round(float(m.margin), 4),
        "threshold": round(float(m.threshold), 4),
        "track_id": int(event.track_id),
        "bbox": [round(float(v), 1) for v in event.bbox],
        "frames_fused": int(event.frames_fused),
        "frame_seq": int(event.frame_seq),
        "watchlist_version": int(event.watchlist_version),
        "models": {"detector": detector, "embedder": embedder},
    }
    if include_crop and event.crop_jpeg:
        body["face_jpeg"] = _b64(event.crop_jpeg)
    return body


def build_alert(
    event: MatchEvent,
    device_id: str,
    signer: Ed25519PrivateKey,
    detector: str,
    embedder: str,
    seal_to: X25519PublicKey | None = None,
    include_crop: bool = True,
    alert_id: str | None = None,
) -> Alert:
    aid = alert_id or str(uuid.uuid4())
    msg: dict[str, Any] = {
        "v": VERSION,
        "type": "alert",
        "alert_id": aid,
        "time": format_utc(event.t_wall),
        "device_id": device_id,
        "camera": event.camera,
    }
    body = alert_body(event, detector, embedder, include_crop)
    if seal_to is None:
        msg["body"] = body
    else:
        blob = seal(seal_to, canonical_json(body), SEAL_INFO, _seal_aad(aid, device_id))
        msg["sealed"] = {"alg": SEAL_ALG, "to": key_id(seal_to), "data": _b64(blob)}
    return Alert(alert_id=aid, payload=sign_message(msg, signer), t_match=event.t_wall)


def sign_message(msg: dict[str, Any], signer: Ed25519PrivateKey, context: Context = Context.ALERT) -> bytes:
    unsigned = {k: v for k, v in msg.items() if k != "sig"}
    signature = sign_document(context, unsigned, signer)
    signed = dict(unsigned, sig={"alg": "Ed25519", "key_id": key_id(signer.public_key()), "value": _b64(signature)})
    return canonical_json(signed)


# --------------------------------------------------------------------------- verifying


@dataclass(frozen=True, slots=True)
class VerifiedAlert:
    alert_id: str
    time: str
    device_id: str
    camera: str
    body: dict[str, Any] | None  # None: sealed to a key we do not hold
    sealed: bool
    face_jpeg: bytes | None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "alert_id": self.alert_id, "time": self.time, "device_id": self.device_id,
            "camera": self.camera, "sealed": self.sealed,
        }  # fmt: skip
        if self.body is not None:
            out.update({k: v for k, v in self.body.items() if k != "face_jpeg"})
        out["has_face"] = self.face_jpeg is not None
        return out


def verify_alert(
    payload: bytes,
    device_keys: Mapping[str, Ed25519PublicKey],
    unseal_key: X25519PrivateKey | None = None,
    topic_device: str | None = None,
) -> VerifiedAlert:
    """Check structure and signature, then unseal; raises AlertRejected naming what is wrong."""
    try:
        return _verify(payload, device_keys, unseal_key, topic_device)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError) as e:
        # Hostile input (NaN, wrong types, a body that is not an object, nesting deeper than the
        # parser's stack…) is a rejection, not a crash.
        raise AlertRejected(f"malformed alert ({type(e).__name__}: {str(e)[:120]})") from None


def _load_object(payload: bytes, what: str) -> dict[str, Any]:
    if len(payload) > MAX_MESSAGE_BYTES:
        raise AlertRejected(f"{len(payload)} bytes is more than the {MAX_MESSAGE_BYTES}-byte limit for {what}")
    try:
        msg = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise AlertRejected("not valid JSON") from None
    except RecursionError:
        raise AlertRejected("JSON nested too deeply") from None
    if not isinstance(msg, dict):
        raise AlertRejected("not a JSON object")
    return msg


def _check_signature(
    msg: dict[str, Any], payload: bytes, public: Ed25519PublicKey, device_id: str, context: Context
) -> None:
    """The device's Ed25519 signature over the canonical bytes, and the wire bytes in canonical form."""
    sig = msg.get("sig")
    if not isinstance(sig, dict) or sig.get("alg") != "Ed25519" or set(sig) != {"alg", "key_id", "value"}:
        raise AlertRejected("missing or unsupported signature")
    # The sig object is outside the signed bytes, so each of its fields is checked on its own.
    if sig["key_id"] != key_id(public):
        raise AlertRejected(
            f"bad signature: signed with key {str(sig['key_id'])[:40]!r}, device {device_id!r} is registered "
            f"with key {key_id(public)!r}"
        )
    signature = _unb64(sig.get("value"), "signature")
    unsigned = {k: v for k, v in msg.items() if k != "sig"}
    if not verify_document(context, unsigned, signature, public):
        raise AlertRejected(f"bad signature: not signed by device {device_id!r}'s registered key") from None
    # The wire bytes must be the canonical form: then no byte can change without breaking the signature.
    if canonical_json(msg) != payload.strip():
        raise AlertRejected("signed content is valid but the message is not in canonical form")


# --------------------------------------------------------------------------- status


def _jsonable(value: Any) -> Any:
    """A status value in the form canonical_json takes: no NaN, no tuples, no foreign types."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def build_status(fields: Mapping[str, Any], device_id: str, signer: Ed25519PrivateKey) -> bytes:
    """A status message signed like an alert (same helper, type "status"), so the back office can
    tell a device's own status from one any broker user could publish."""
    msg = {k: _jsonable(v) for k, v in fields.items() if k not in PROTOCOL_FIELDS}
    msg.setdefault("time", format_utc(time.time()))
    msg.update(v=VERSION, type=STATUS_TYPE, device_id=device_id)
    return sign_message(msg, signer, Context.STATUS)


def verify_status(
    payload: bytes, device_keys: Mapping[str, Ed25519PublicKey], topic_device: str | None = None
) -> dict[str, Any]:
    """The status fields (without v/type/sig) of a status signed by its registered device;
    AlertRejected naming what is wrong otherwise."""
    try:
        msg = _load_object(payload, "a status")
        if msg.get("v") != VERSION or msg.get("type") != STATUS_TYPE:
            raise AlertRejected("unsigned or unsupported status (no v/type/sig of a signed device status)")
        device_id = msg.get("device_id")
        if not isinstance(device_id, str) or not device_id:
            raise AlertRejected("field 'device_id' is missing or not a string")
        if topic_device is not None and topic_device != device_id:
            raise AlertRejected(f"device_id {device_id[:64]!r} does not match the topic's device {topic_device!r}")
        public = device_keys.get(device_id)
        if public is None:
            raise AlertRejected(f"unknown device {device_id[:64]!r} (not in the back-office device list)")
        _check_signature(msg, payload, public, device_id, Context.STATUS)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError) as e:
        raise AlertRejected(f"malformed status ({type(e).__name__}: {str(e)[:120]})") from None
    return {k: v for k, v in msg.items() if k not in PROTOCOL_FIELDS}


def _verify(
    payload: bytes,
    device_keys: Mapping[str, Ed25519PublicKey],
    unseal_key: X25519PrivateKey | None,
    topic_device: str | None,
) -> VerifiedAlert:
    msg = _load_object(payload, "an alert")
    if msg.get("v") != VERSION or msg.get("type") != "alert":
        raise AlertRejected(f"unsupported message version/type {msg.get('v')!r}/{msg.get('type')!r}")
    for f in HEADER_FIELDS[2:]:
        if not isinstance(msg.get(f), str) or not msg[f]:
            raise AlertRejected(f"field {f!r} is missing or not a string")
    device_id = msg["device_id"]
    if topic_device is not None and topic_device != device_id:
        raise AlertRejected(f"device_id {device_id!r} does not match the topic's device {topic_device!r}")
    public = device_keys.get(device_id)
    if public is None:
        raise AlertRejected(f"unknown device {device_id[:64]!r} (not in the back-office device list)")
    _check_signature(msg, payload, public, device_id, Context.ALERT)
    body: dict[str, Any] | None
    if "sealed" in msg:
        sealed = msg["sealed"]
        if not isinstance(sealed, dict) or sealed.get("alg") != SEAL_ALG:
            raise AlertRejected("unsupported sealing")
        if unseal_key is None:
            body = None
        else:
            blob = _unb64(sealed.get("data"), "sealed data")
            try:
                plain = unseal(unseal_key, blob, SEAL_INFO, _seal_aad(msg["alert_id"], device_id))
            except CryptoError as e:
                raise AlertRejected(f"cannot unseal: {e}") from None
            body = json.loads(plain)
            if not isinstance(body, dict):
                raise AlertRejected("sealed body is not an object")
    else:
        body = msg.get("body")
        if not isinstance(body, dict):
            raise AlertRejected("no body")
    face = None
    if body is not None:
        missing = [f for f in BODY_FIELDS if f not in body]
        if missing:
            raise AlertRejected(f"body lacks {', '.join(missing)}")
        if "face_jpeg" in body:
            face = _unb64(body["face_jpeg"], "face_jpeg")
    return VerifiedAlert(
        alert_id=msg["alert_id"], time=msg["time"], device_id=device_id, camera=msg["camera"],
        body=body, sealed="sealed" in msg, face_jpeg=face,
    )  # fmt: skip
