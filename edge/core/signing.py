"""The one way the project signs and verifies: Ed25519 over a context string and canonical bytes.

Every signature is `Ed25519(context || data)` where `context` names the kind of message (`Context`)
and, for JSON documents, `data` is the RFC 8785 (JCS) canonical form of the document
(`canonical_json`): keys sorted, no whitespace, UTF-8, numbers in ECMAScript's shortest round-trip
form (so 1.0 is written 1). Alerts, device status, audit checkpoints, commands and their
acknowledgements are JSON and sign with `sign_document`; the watchlist bundle is a binary container
and signs its bytes with `sign` (see Context.WATCHLIST_BUNDLE).

Domain separation: the contexts are prefix-free (checked at import), so `context_a || x` can never
equal `context_b || y` for two different kinds; a device's alert signature can never be replayed as
its status, an audit checkpoint or a command acknowledgement, all of which it signs with the same key.
The context bytes of the kinds that existed before this module are the prefixes those messages were
already signed with, so stored audit logs, spooled alerts and installed bundles still verify.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class Signer(Protocol):
    """An Ed25519 private key, or anything that signs like one (a key held elsewhere)."""

    def sign(self, data: bytes) -> bytes: ...


class Context(enum.Enum):
    """What a signature is for. The value is the byte string signed in front of the data."""

    ALERT = b"lfr-edge alert v1\x00"
    STATUS = b"lfr-edge status v1\x00"
    AUDIT_CHECKPOINT = b"lfr-edge audit checkpoint v1\n"
    COMMAND = b"lfr-edge-cmd/1\n"
    COMMAND_ACK = b"lfr-edge-ack/1\n"
    ALERT_ACK = b"lfr-edge-alert-ack/1\n"  # the back office: "these alerts are stored durably"
    # The bundle keeps its binary container (templates are a large float array: base64 inside JSON
    # would cost a third more bytes on a van's link and a parse before the signature check, which must
    # come first). Its signature already covers the container's magic number and version
    # (b"LFRWLB" + u16 1), so that magic is its context: the bundle signs `sign(WATCHLIST_BUNDLE,
    # rest)` and its bytes are unchanged. A new bundle format version needs a new member.
    WATCHLIST_BUNDLE = b"LFRWLB\x00\x01"


def _check_prefix_free() -> None:
    values = [c.value for c in Context]
    for a in values:
        for b in values:
            if a is not b and b.startswith(a):
                raise RuntimeError(f"signing context {a!r} is a prefix of {b!r}: domains would overlap")


_check_prefix_free()


# --------------------------------------------------------------------------- canonical JSON (RFC 8785)


def _number(x: float | int) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        raise ValueError("NaN and infinity have no JSON form")
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 1e21:
        return str(int(x))
    # Python's repr gives the shortest round-trip digits, as ECMAScript does; only the choice
    # between plain and exponent notation differs, so rebuild that from digits and exponent.
    mantissa, _, exp_s = repr(abs(x)).partition("e")
    int_part, _, frac = mantissa.partition(".")
    raw = int_part + frac
    digits = raw.lstrip("0")
    point = len(int_part) + (int(exp_s) if exp_s else 0) - (len(raw) - len(digits))
    digits = digits.rstrip("0")
    k, n = len(digits), point
    sign = "-" if x < 0 else ""
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    m = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{m}e{'+' if e > 0 else '-'}{abs(e)}"


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif isinstance(value, bool | int | float):
        out.append(_number(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, Mapping):
        out.append("{")
        # JCS sorts by UTF-16 code units; our keys are ASCII, where that equals code point order.
        for i, k in enumerate(sorted(value, key=lambda s: str(s).encode("utf-16-be"))):
            if i:
                out.append(",")
            out.append(json.dumps(str(k), ensure_ascii=False))
            out.append(":")
            _encode(value[k], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            _encode(v, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} has no canonical JSON form")


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON document: what is signed, hashed and (for alerts, status and audit
    records) sent or written, so no byte can change without breaking the signature or hash."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")


# --------------------------------------------------------------------------- the primitive


def sign(context: Context, data: bytes, key: Signer) -> bytes:
    """The 64-byte Ed25519 signature of `data` as a message of kind `context`."""
    return key.sign(context.value + data)


def verify(context: Context, data: bytes, signature: bytes, public: Ed25519PublicKey) -> bool:
    """Whether `signature` is `public`'s signature of `data` as a message of kind `context`."""
    try:
        public.verify(signature, context.value + data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def sign_document(context: Context, doc: Any, key: Signer) -> bytes:
    """The signature of a JSON document (its canonical bytes) as a message of kind `context`."""
    return sign(context, canonical_json(doc), key)


def verify_document(context: Context, doc: Any, signature: bytes, public: Ed25519PublicKey) -> bool:
    return verify(context, canonical_json(doc), signature, public)


def sign_framed(context: Context, framed: bytes, key: Signer) -> bytes:
    """`sign(context, framed[len(context):], key)` for a binary container whose bytes already begin
    with its context (its magic number): the same signature, without copying a large container."""
    _need_frame(context, framed)
    return key.sign(framed)


def verify_framed(
    context: Context, framed: bytes | memoryview, signature: bytes, public: Ed25519PublicKey
) -> bool:
    """`verify` for a container that begins with its context; a container that does not is refused."""
    if bytes(framed[: len(context.value)]) != context.value:
        return False
    try:
        public.verify(signature, framed)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _need_frame(context: Context, framed: bytes) -> None:
    if not framed.startswith(context.value):
        raise ValueError(f"data does not begin with the {context.name} context")
