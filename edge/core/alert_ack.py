"""End-to-end alert acknowledgements: the back office says "stored durably", the device believes it.

The broker's PUBACK only means "the broker has it"; a broker restarted without persistence, or a
back office whose storage failed, loses what it had. So an alert leaves the device's spool only when
the back office, after committing it to disk or database, publishes on `<prefix>/ack` an
acknowledgement signed with the back-office Ed25519 key the device already trusts for watchlists
and commands (watchlist.trusted_signers).

Envelope (JSON), the shape of the signed commands (edge/device/watchlist/sync.py):
{"format": "lfr-edge-alert-ack/1", "signer": key id, "body": base64 of the body's canonical JSON,
"signature": base64}, signed through edge.core.signing under Context.ALERT_ACK. Body: {"device_id",
"alert_ids": [...], "time" (RFC 3339 UTC)}. The context is signed, so an acknowledgement can never
pass for a command or a bundle signed with the same key. No replay protection is needed: an acknowledgement
only names alerts the back office has stored, and replaying it can only confirm them again.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.core import signing
from edge.core.keys import key_id
from edge.core.signing import Context, canonical_json
from edge.core.timefmt import format_utc

ACK_FORMAT = "lfr-edge-alert-ack/1"
ACK_TOPIC_SUFFIX = "ack"
MAX_ACK_BYTES = 64 << 10
MAX_IDS_PER_ACK = 500
MAX_ID_CHARS = 128


class AckRejected(Exception):
    """An acknowledgement the device must ignore: malformed, unsigned, forged or for another device."""


@dataclass(frozen=True, slots=True)
class AlertAck:
    device_id: str
    alert_ids: tuple[str, ...]
    time: str


def build_ack(key: Ed25519PrivateKey, device_id: str, alert_ids: Sequence[str], now: float | None = None) -> bytes:
    """Back office: the signed acknowledgement of alerts it has stored durably."""
    if not 0 < len(alert_ids) <= MAX_IDS_PER_ACK:
        raise ValueError(f"an acknowledgement names 1 to {MAX_IDS_PER_ACK} alerts, not {len(alert_ids)}")
    body = {
        "device_id": device_id,
        "alert_ids": list(alert_ids),
        "time": format_utc(time.time() if now is None else now),
    }
    body_bytes = canonical_json(body)
    return json.dumps(
        {
            "format": ACK_FORMAT,
            "signer": key_id(key.public_key()),
            "body": base64.b64encode(body_bytes).decode(),
            "signature": base64.b64encode(signing.sign(Context.ALERT_ACK, body_bytes, key)).decode(),
        },
        separators=(",", ":"),
    ).encode()


def open_ack(data: bytes, signers: Iterable[Ed25519PublicKey], device_id: str) -> AlertAck:
    """Device: the acknowledgement when a trusted back-office key signed it for this device."""
    if len(data) > MAX_ACK_BYTES:
        raise AckRejected(f"{len(data)} bytes is more than {MAX_ACK_BYTES}")
    try:
        env = json.loads(data.decode("utf-8"))
        if not isinstance(env, dict) or env.get("format") != ACK_FORMAT:
            raise ValueError
        signer, body_b64, sig_b64 = env["signer"], env["body"], env["signature"]
        body_bytes = base64.b64decode(body_b64, validate=True)
        signature = base64.b64decode(sig_b64, validate=True)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise AckRejected(f"not a {ACK_FORMAT} envelope") from None
    key = {key_id(k): k for k in signers}.get(signer) if isinstance(signer, str) else None
    if key is None:
        raise AckRejected("not signed by a trusted back-office key")
    if not signing.verify(Context.ALERT_ACK, body_bytes, signature, key):
        raise AckRejected("signature does not verify (altered or forged)")
    try:
        body = json.loads(body_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise AckRejected("signed body is not JSON") from None
    if not isinstance(body, dict) or body.get("device_id") != device_id:
        raise AckRejected(f"addressed to {str(body.get('device_id') if isinstance(body, dict) else None)[:64]!r}")
    ids = body.get("alert_ids")
    if (
        not isinstance(ids, list)
        or not 0 < len(ids) <= MAX_IDS_PER_ACK
        or not all(isinstance(i, str) and 0 < len(i) <= MAX_ID_CHARS for i in ids)
    ):
        raise AckRejected("alert_ids is not a list of alert ids")
    return AlertAck(device_id, tuple(ids), str(body.get("time", ""))[:64])
