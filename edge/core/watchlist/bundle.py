"""Signed, encrypted watchlist bundles: the only form in which templates travel (docs/WATCHLIST.md).

Container (all integers big-endian):

    magic          8   b"LFRWLB" + format version (u16)
    signer id      8   first 8 bytes of sha256(raw Ed25519 public key of the signer)
    header_len     4   u32
    header         n   UTF-8 JSON: version, created_at, expires_at, embedder_sha256, landmarks_sha256
                       (the face mesh that placed the chips' points; null: detector keypoints), signer,
                       recipients [{key_id, wrapped_key}], payload cipher and dtype
    payload_len    8   u64
    payload        m   nonce (12) | AES-256-GCM(content key, plaintext, aad = everything before it)
    signature      64  Ed25519 over every byte before it (edge.core.signing, Context.WATCHLIST_BUNDLE:
                       the magic that starts the signed bytes is the domain-separation context)

The signature is checked before any structure is parsed, so every later parser only ever sees bytes
the back office signed; a corrupt or forged bundle is refused by the cheapest possible check. The
random content key is sealed to each recipient device's X25519 key (edge.core.keys.seal).

`verify_bundle` is the one verifier used by `watchlist install`, MQTT sync and the inbox: any input
gives either a verified Watchlist or a BundleError with a reason code and one clear line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.core.errors import EXIT_VERIFY, InputError, VerificationFailed
from edge.core.keys import CryptoError, DeviceKeys, key_id, raw_public_bytes, seal, unseal
from edge.core.signing import Context, canonical_json, sign_framed, verify_framed
from edge.core.timefmt import format_utc, parse_utc
from edge.core.types import Subject
from edge.core.watchlist.model import Watchlist

FORMAT_VERSION = 1
MAGIC = b"LFRWLB" + struct.pack(">H", FORMAT_VERSION)
if Context.WATCHLIST_BUNDLE.value != MAGIC:  # the magic is the signing context: they change together
    raise RuntimeError("bundle MAGIC and signing Context.WATCHLIST_BUNDLE differ")
_MAGIC_STEM = MAGIC[:6]
SIGNER_ID_BYTES = 8
SIG_BYTES = 64
_PREFIX = len(MAGIC) + SIGNER_ID_BYTES  # 16
MIN_BUNDLE = _PREFIX + 4 + 2 + 8 + 12 + 16 + SIG_BYTES  # smallest bytes that could be a bundle
MAX_HEADER = 4 << 20  # 4 MiB of header JSON is ~40k recipients: far beyond any fleet
WRAP_INFO = b"lfr-edge watchlist content key v1"
DTYPES: dict[str, np.dtype[Any]] = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
MAX_DIM = 4096
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")


class Reason:
    """Reason codes carried by BundleError (stable strings for the audit log and tests)."""

    OVERSIZE = "oversize"
    TRUNCATED = "truncated"
    CORRUPT = "corrupt"
    UNSUPPORTED = "unsupported_format"
    UNKNOWN_SIGNER = "unknown_signer"
    BAD_SIGNATURE = "bad_signature"
    NOT_ADDRESSED = "not_addressed"
    ROLLBACK = "rollback"
    EXPIRED = "expired"
    MODEL_MISMATCH = "model_mismatch"


class BundleError(InputError):
    """A refused bundle: `reason` is one of Reason.*; the message is one line."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"watchlist bundle refused ({reason}): {message}")


class BundleSignatureError(BundleError, VerificationFailed):
    """A refusal because the bundle does not verify: its signature fails or its signer is not trusted."""

    exit_code = EXIT_VERIFY


@dataclass(frozen=True, slots=True)
class BundleHeader:
    """The signed, cleartext part of a bundle (never contains templates or subject ids)."""

    format: int
    version: int
    created_at: float
    expires_at: float
    embedder_sha256: str
    landmarks_sha256: str | None  # the face mesh the templates' chips were cut with; None: keypoints
    signer: str
    recipients: tuple[str, ...]  # device X25519 key ids
    dtype: str
    raw: Mapping[str, Any]


# --------------------------------------------------------------------------- building


def _encode_payload(
    subjects: Sequence[Subject],
    templates: npt.NDArray[np.floating[Any]],
    template_subject: npt.NDArray[np.integer[Any]],
    dtype: str,
    metadata: Mapping[str, Any],
) -> bytes:
    meta = {
        "subject_ids": [s.subject_id for s in subjects],
        "categories": [s.category for s in subjects],
        "priorities": [s.priority for s in subjects],
        "thresholds": [s.threshold for s in subjects],
        "n_templates": int(templates.shape[0]),
        "dim": int(templates.shape[1]),
        "dtype": dtype,
        "metadata": dict(metadata),
    }
    meta_bytes = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()
    # Pad with JSON whitespace so the arrays after it start 4-byte aligned: the device can then use
    # the decrypted float32 templates in place instead of copying them.
    meta_bytes += b" " * (-(4 + len(meta_bytes)) % 4)
    return b"".join(
        (
            struct.pack(">I", len(meta_bytes)),
            meta_bytes,
            np.ascontiguousarray(template_subject, dtype="<i4").tobytes(),
            np.ascontiguousarray(templates, dtype=DTYPES[dtype]).tobytes(),
        )
    )


def build_bundle(
    *,
    subjects: Sequence[Subject],
    templates: npt.NDArray[np.floating[Any]],
    template_subject: npt.NDArray[np.integer[Any]],
    signer: Ed25519PrivateKey,
    recipients: Sequence[X25519PublicKey],
    version: int,
    expires_at: float,
    embedder_sha256: str,
    created_at: float | None = None,
    landmarks_sha256: str | None = None,
    dtype: str = "float32",
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """Encrypt, wrap for each recipient and sign. Templates are L2-normalised here.

    Rows of `templates` belong to `subjects[template_subject[i]]`; rows are regrouped so that each
    subject's templates are contiguous (the matcher relies on it).
    """
    if dtype not in DTYPES:
        raise InputError(f"template dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if not recipients:
        raise InputError("a bundle needs at least one recipient device (--to DEVICE_PUB)")
    if version < 1:
        raise InputError(f"bundle version must be a positive integer, got {version}")
    if not _HEX64.match(embedder_sha256):
        raise InputError(f"embedder sha256 {embedder_sha256!r} is not 64 lowercase hex digits")
    if landmarks_sha256 is not None and not _HEX64.match(landmarks_sha256):
        raise InputError(f"face-mesh sha256 {landmarks_sha256!r} is not 64 lowercase hex digits")
    t = np.asarray(templates, dtype=np.float64)
    ts = np.asarray(template_subject, dtype=np.int64)
    if t.ndim != 2 or ts.shape != (t.shape[0],) or not 0 < t.shape[1] <= MAX_DIM:
        raise InputError(
            f"templates must be (M, D) with one subject index per row, got {t.shape}, {ts.shape}"
        )
    if ts.size and (ts.min() < 0 or ts.max() >= len(subjects)):
        raise InputError("template_subject holds an index outside the subject list")
    counts = np.bincount(ts, minlength=len(subjects)) if ts.size else np.zeros(len(subjects), np.int64)
    if len(subjects) and counts.min() == 0:
        missing = subjects[int(np.argmin(counts))].subject_id
        raise InputError(f"subject {missing!r} has no template")
    ids = [s.subject_id for s in subjects]
    if len(set(ids)) != len(ids):
        raise InputError("subject ids must be unique")
    norms = np.linalg.norm(t, axis=1, keepdims=True)
    if not np.all(np.isfinite(t)) or np.any(norms == 0):
        raise InputError("templates must be finite and non-zero")
    order = np.argsort(ts, kind="stable")
    t, ts = (t / norms)[order], ts[order]
    created = time.time() if created_at is None else created_at
    if expires_at <= created:
        raise InputError(f"expires_at {format_utc(expires_at)} is not after created_at {format_utc(created)}")

    content_key = AESGCM.generate_key(bit_length=256)
    header = {
        "format": FORMAT_VERSION,
        "version": int(version),
        "created_at": format_utc(created),
        "expires_at": format_utc(expires_at),
        "embedder_sha256": embedder_sha256,
        "landmarks_sha256": landmarks_sha256,
        "signer": key_id(signer.public_key()),
        "recipients": [
            {"key_id": key_id(r), "wrapped_key": base64.b64encode(seal(r, content_key, WRAP_INFO)).decode()}
            for r in recipients
        ],
        "payload": {"cipher": "AES-256-GCM", "dtype": dtype, "n_subjects": len(subjects)},
    }
    header_bytes = canonical_json(header)
    signer_id = hashlib.sha256(raw_public_bytes(signer.public_key())).digest()[:SIGNER_ID_BYTES]
    head = MAGIC + signer_id + struct.pack(">I", len(header_bytes)) + header_bytes
    plaintext = _encode_payload(subjects, t, ts, dtype, metadata or {})
    nonce = os.urandom(12)
    payload = nonce + AESGCM(content_key).encrypt(nonce, plaintext, head)
    body = head + struct.pack(">Q", len(payload)) + payload
    # The container begins with MAGIC, its signing context (edge.core.signing, WATCHLIST_BUNDLE).
    return body + sign_framed(Context.WATCHLIST_BUNDLE, body, signer)


# --------------------------------------------------------------------------- verifying


@dataclass(frozen=True, slots=True)
class _Authentic:
    head: bytes  # magic .. header: the AAD of the payload
    header: BundleHeader
    payload: memoryview


def _signers_by_id(trusted: Iterable[Ed25519PublicKey]) -> dict[bytes, Ed25519PublicKey]:
    return {hashlib.sha256(raw_public_bytes(k)).digest()[:SIGNER_ID_BYTES]: k for k in trusted}


def _need(cond: bool, reason: str, message: str) -> None:
    if not cond:
        raise BundleError(reason, message)


def _need_signed(cond: bool, reason: str, message: str) -> None:
    if not cond:
        raise BundleSignatureError(reason, message)


def _field(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(name)
    # bool is an int subclass; a version of `true` is corrupt, not 1.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BundleError(Reason.CORRUPT, f"header field {name!r} is missing or not a {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _parse_header(header_bytes: bytes, signer_id: bytes) -> BundleHeader:
    try:
        raw = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BundleError(Reason.CORRUPT, "header is not valid UTF-8 JSON") from None
    _need(isinstance(raw, dict), Reason.CORRUPT, "header is not a JSON object")
    fmt = _field(raw, "format", int)
    _need(fmt == FORMAT_VERSION, Reason.UNSUPPORTED, f"header format {fmt} is not {FORMAT_VERSION}")
    version = _field(raw, "version", int)
    _need(version >= 1, Reason.CORRUPT, f"bundle version {version} is not positive")
    times = {}
    for name in ("created_at", "expires_at"):
        try:
            times[name] = parse_utc(_field(raw, name, str), name)
        except BundleError:
            raise
        except InputError:
            raise BundleError(Reason.CORRUPT, f"header field {name!r} is not an RFC 3339 time") from None
    embedder = _field(raw, "embedder_sha256", str)
    _need(bool(_HEX64.match(embedder)), Reason.CORRUPT, "header embedder_sha256 is not a sha256")
    landmarks = raw.get("landmarks_sha256")
    _need(landmarks is None or (isinstance(landmarks, str) and bool(_HEX64.match(landmarks))), Reason.CORRUPT,
          "header landmarks_sha256 is neither null nor a sha256")  # fmt: skip
    signer = _field(raw, "signer", str)
    _need(signer == signer_id.hex(), Reason.CORRUPT, "header signer does not match the signer id")
    recipients = _field(raw, "recipients", list)
    for r in recipients:
        _need(
            isinstance(r, dict)
            and isinstance(r.get("key_id"), str)
            and isinstance(r.get("wrapped_key"), str),
            Reason.CORRUPT,
            "a recipient entry lacks key_id or wrapped_key",
        )
    payload = _field(raw, "payload", dict)
    dtype = payload.get("dtype")
    _need(dtype in DTYPES, Reason.UNSUPPORTED, f"template dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    _need(payload.get("cipher") == "AES-256-GCM", Reason.UNSUPPORTED, "payload cipher is not AES-256-GCM")
    return BundleHeader(
        format=fmt,
        version=version,
        created_at=times["created_at"],
        expires_at=times["expires_at"],
        embedder_sha256=embedder,
        landmarks_sha256=landmarks,
        signer=signer,
        recipients=tuple(r["key_id"] for r in recipients),
        dtype=str(dtype),
        raw=raw,
    )


def _authenticate(data: bytes, trusted: Iterable[Ed25519PublicKey], max_bytes: int) -> _Authentic:
    n = len(data)
    _need(n <= max_bytes, Reason.OVERSIZE, f"{n} bytes is more than the {max_bytes}-byte limit")
    _need(n >= len(_MAGIC_STEM), Reason.TRUNCATED, f"{n} bytes is too short to be a bundle")
    _need(data[: len(_MAGIC_STEM)] == _MAGIC_STEM, Reason.CORRUPT, "not a watchlist bundle (bad magic)")
    _need(n >= len(MAGIC), Reason.TRUNCATED, f"{n} bytes is too short to be a bundle")
    _need(
        data[: len(MAGIC)] == MAGIC,
        Reason.UNSUPPORTED,
        f"bundle format {struct.unpack('>H', data[6:8])[0]} is not {FORMAT_VERSION}",
    )
    _need(n >= MIN_BUNDLE, Reason.TRUNCATED, f"{n} bytes is too short to be a bundle")
    signer_id = data[len(MAGIC) : _PREFIX]
    signers = _signers_by_id(trusted)
    key = signers.get(signer_id)
    _need_signed(
        key is not None,
        Reason.UNKNOWN_SIGNER,
        f"signed by key {signer_id.hex()}, which is not among the {len(signers)} trusted signer(s)",
    )
    assert key is not None
    # memoryview slices: a 50 MB bundle is verified and decrypted without copying it.
    view = memoryview(data)
    body, signature = view[:-SIG_BYTES], bytes(view[-SIG_BYTES:])
    if not verify_framed(Context.WATCHLIST_BUNDLE, body, signature, key):
        raise BundleSignatureError(
            Reason.BAD_SIGNATURE,
            f"the signature of key {signer_id.hex()} does not verify (altered or forged)",
        ) from None
    # Everything below parses signed bytes; the checks still guard against a buggy signer.
    (header_len,) = struct.unpack(">I", body[_PREFIX : _PREFIX + 4])
    header_end = _PREFIX + 4 + header_len
    _need(header_len <= MAX_HEADER, Reason.CORRUPT, f"header length {header_len} exceeds {MAX_HEADER}")
    _need(header_end + 8 <= len(body), Reason.TRUNCATED, "header runs past the end of the bundle")
    header = _parse_header(bytes(body[_PREFIX + 4 : header_end]), signer_id)
    (payload_len,) = struct.unpack(">Q", body[header_end : header_end + 8])
    payload = body[header_end + 8 :]
    _need(
        payload_len == len(payload),
        Reason.TRUNCATED,
        f"payload is {len(payload)} bytes, header says {payload_len}",
    )
    return _Authentic(head=bytes(body[:header_end]), header=header, payload=payload)


def _check_policy(
    header: BundleHeader,
    current_version: int | None,
    embedder_sha256: str | None,
    landmarks_sha256: str | None,
    now: float | None,
) -> None:
    """`current_version` None: nothing installed; `now` None: expiry not checked here;
    `embedder_sha256` None: no model check (then `landmarks_sha256` is not checked either)."""
    if current_version is not None:
        _need(
            header.version > current_version,
            Reason.ROLLBACK,
            f"bundle version {header.version} is not newer than the installed version {current_version}",
        )
    if now is not None:
        _need(now < header.expires_at, Reason.EXPIRED, f"bundle expired at {format_utc(header.expires_at)}")
    if embedder_sha256 is not None:
        _need(
            header.embedder_sha256 == embedder_sha256,
            Reason.MODEL_MISMATCH,
            f"templates were made with embedder {header.embedder_sha256[:12]}…, this device runs "
            f"{embedder_sha256[:12]}…",
        )
        # Templates from chips cut another way than the device cuts its probes would match worse
        # than the calibrated thresholds promise, so the chip recipe is bound as the network is.
        _need(
            header.landmarks_sha256 == landmarks_sha256,
            Reason.MODEL_MISMATCH,
            f"templates were cut with {_chips(header.landmarks_sha256)}, this device cuts with "
            f"{_chips(landmarks_sha256)}",
        )


def _chips(landmarks_sha256: str | None) -> str:
    return "detector keypoints" if landmarks_sha256 is None else f"face mesh {landmarks_sha256[:12]}…"


def _wrapped_key(header: BundleHeader, device: DeviceKeys) -> str:
    """The content key as wrapped for this device; NOT_ADDRESSED when the bundle names it nowhere."""
    mine = device.x25519_id
    for entry in header.raw["recipients"]:
        if entry["key_id"] == mine:
            return str(entry["wrapped_key"])
    raise BundleError(
        Reason.NOT_ADDRESSED,
        f"not addressed to this device (key {mine}); recipients: {', '.join(header.recipients) or 'none'}",
    )


def _content_key(wrapped_b64: str, device: DeviceKeys) -> bytes:
    try:
        cek = unseal(device.x25519, base64.b64decode(wrapped_b64, validate=True), WRAP_INFO)
    except (binascii.Error, ValueError, CryptoError):
        raise BundleError(Reason.CORRUPT, "the content key wrapped for this device cannot be opened") from None
    _need(len(cek) == 32, Reason.CORRUPT, "the content key is not 32 bytes")
    return cek


def _str_list(meta: Mapping[str, Any], name: str, n: int) -> list[str]:
    values = meta.get(name)
    _need(
        isinstance(values, list) and len(values) == n and set(map(type, values)) <= {str},
        Reason.CORRUPT,
        f"payload {name} is not a list of {n} strings",
    )
    assert isinstance(values, list)
    return values


def _decode_payload(
    plaintext: bytes, dtype_name: str
) -> tuple[tuple[Subject, ...], Any, Any, dict[str, Any]]:
    _need(len(plaintext) >= 4, Reason.CORRUPT, "payload is too short")
    (meta_len,) = struct.unpack(">I", plaintext[:4])
    _need(4 + meta_len <= len(plaintext), Reason.CORRUPT, "payload metadata runs past its end")
    try:
        meta = json.loads(plaintext[4 : 4 + meta_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BundleError(Reason.CORRUPT, "payload metadata is not valid JSON") from None
    _need(isinstance(meta, dict), Reason.CORRUPT, "payload metadata is not a JSON object")
    m, d = meta.get("n_templates"), meta.get("dim")
    _need(
        type(m) is int and type(d) is int and m >= 0 and 0 < d <= MAX_DIM,
        Reason.CORRUPT,
        "payload n_templates/dim are invalid",
    )
    assert isinstance(m, int) and isinstance(d, int)
    _need(meta.get("dtype") == dtype_name, Reason.CORRUPT, "payload dtype differs from the header's")
    ids = meta.get("subject_ids")
    _need(isinstance(ids, list), Reason.CORRUPT, "payload subject_ids is not a list")
    assert isinstance(ids, list)
    n = len(ids)
    ids = _str_list(meta, "subject_ids", n)
    cats = _str_list(meta, "categories", n)
    prios, thrs = meta.get("priorities"), meta.get("thresholds")
    _need(
        isinstance(prios, list) and len(prios) == n and set(map(type, prios)) <= {int},
        Reason.CORRUPT,
        "payload priorities are not integers",
    )
    _need(
        isinstance(thrs, list)
        and len(thrs) == n
        and all(t is None or (type(t) in (int, float) and math.isfinite(t)) for t in thrs),
        Reason.CORRUPT,
        "payload thresholds are not numbers or null",
    )
    assert isinstance(prios, list) and isinstance(thrs, list)
    _need(len(set(ids)) == n, Reason.CORRUPT, "payload subject ids are not unique")
    dt = DTYPES[dtype_name]
    off = 4 + meta_len
    expected = off + 4 * m + dt.itemsize * m * d
    _need(
        len(plaintext) == expected, Reason.CORRUPT, f"payload is {len(plaintext)} bytes, expected {expected}"
    )
    ts = np.frombuffer(plaintext, dtype="<i4", count=m, offset=off).astype(np.int32)
    raw = np.frombuffer(plaintext, dtype=dt, count=m * d, offset=off + 4 * m).reshape(m, d)
    if m:
        _need(
            bool(ts[0] >= 0 and ts[-1] < n and np.all(ts[1:] >= ts[:-1])),
            Reason.CORRUPT,
            "template subject indices are out of range or not grouped by subject",
        )
    templates = raw if raw.dtype == np.float32 and raw.flags.aligned else raw.astype(np.float32)
    # Row norms without an (M, D) temporary; a NaN or inf anywhere in a row makes its norm non-finite.
    norms = np.sqrt(np.einsum("ij,ij->i", templates, templates))[:, None]
    _need(
        bool(np.all(np.isfinite(norms)) and np.all(norms > 0)),
        Reason.CORRUPT,
        "templates hold non-finite or zero rows",
    )
    if not np.all(np.abs(norms - 1.0) < 1e-5):
        # float16 storage loses ~1e-3 of norm; renormalise so cosines stay exact dot products.
        templates = (templates / norms).astype(np.float32)
    # Otherwise `templates` may be a read-only view of the decrypted payload: no copy, and nothing
    # downstream can alter the list in force.
    if not set(map(type, thrs)) <= {type(None), float}:
        thrs = [None if t is None else float(t) for t in thrs]
    # map() with positional arguments: building 1M subjects is the largest share of load time.
    subjects = tuple(map(Subject, ids, cats, prios, thrs))
    metadata = meta.get("metadata")
    return subjects, templates, ts, metadata if isinstance(metadata, dict) else {}


def _open(auth: _Authentic, device: DeviceKeys, wrapped_b64: str) -> Watchlist:
    cek = _content_key(wrapped_b64, device)
    payload = auth.payload
    try:
        plaintext = AESGCM(cek).decrypt(bytes(payload[:12]), payload[12:], auth.head)
    except Exception:
        raise BundleError(Reason.CORRUPT, "payload failed decryption (altered or mis-built)") from None
    subjects, templates, ts, _meta = _decode_payload(plaintext, auth.header.dtype)
    h = auth.header
    return Watchlist(
        version=h.version,
        created_at=h.created_at,
        expires_at=h.expires_at,
        subjects=subjects,
        templates=templates,
        template_subject=ts,
        signer_key_id=h.signer,
        embedder_sha256=h.embedder_sha256,
    )


def _guarded(fn: Any, *args: Any) -> Any:
    """Turn any unexpected failure while handling untrusted bytes into a BundleError."""
    try:
        return fn(*args)
    except BundleError:
        raise
    except MemoryError:
        raise BundleError(Reason.OVERSIZE, "bundle needs more memory than is available") from None
    except Exception as e:
        raise BundleError(Reason.CORRUPT, f"malformed bundle ({type(e).__name__})") from None


def read_header(data: bytes, trusted_signers: Iterable[Ed25519PublicKey], max_bytes: int) -> BundleHeader:
    """Authenticate and return the cleartext header without decrypting (needs no device key)."""
    auth: _Authentic = _guarded(_authenticate, bytes(data), list(trusted_signers), max_bytes)
    return auth.header


def verify_bundle(
    data: bytes,
    device_keys: DeviceKeys,
    trusted_signers: Iterable[Ed25519PublicKey],
    current_version: int | None,
    embedder_sha256: str | None,
    now: float | None = None,
    max_bytes: int = 256 << 20,
    landmarks_sha256: str | None = None,
) -> Watchlist:
    """The one verifier: a Watchlist, or BundleError with one clear line. Never another exception.

    Order: size → structure → signer → signature → (signed header) recipient, rollback, expiry,
    embedder → decrypt → payload. `current_version` None means no list is installed;
    `embedder_sha256` None skips the model check (back-office tools only); `landmarks_sha256` is
    the face mesh this device cuts its chips with (None: detector keypoints).
    """

    def run() -> Watchlist:
        auth = _authenticate(bytes(data), list(trusted_signers), max_bytes)
        wrapped = _wrapped_key(auth.header, device_keys)
        _check_policy(
            auth.header, current_version, embedder_sha256, landmarks_sha256, time.time() if now is None else now
        )
        return _open(auth, device_keys, wrapped)

    result: Watchlist = _guarded(run)
    return result


def open_stored_bundle(
    data: bytes,
    device_keys: DeviceKeys,
    trusted_signers: Iterable[Ed25519PublicKey],
    embedder_sha256: str | None,
    max_bytes: int = 1 << 40,
    landmarks_sha256: str | None = None,
) -> Watchlist:
    """Re-open an already accepted bundle from the device store: the same checks except rollback
    and expiry (an expired list still loads so the status can say so; the matcher refuses it)."""

    def run() -> Watchlist:
        auth = _authenticate(bytes(data), list(trusted_signers), max_bytes)
        _check_policy(auth.header, None, embedder_sha256, landmarks_sha256, None)
        return _open(auth, device_keys, _wrapped_key(auth.header, device_keys))

    result: Watchlist = _guarded(run)
    return result


def peek_version(data: bytes) -> int:
    """The version a bundle's header claims, read without the signer's key or any device key.

    Unauthenticated: for the back office to compare what it is about to publish with what a topic
    already holds (`watchlist publish`); a device never decides anything on it."""
    n = len(data)
    _need(n >= MIN_BUNDLE and data[: len(MAGIC)] == MAGIC, Reason.CORRUPT, "not a watchlist bundle")
    (header_len,) = struct.unpack(">I", data[_PREFIX : _PREFIX + 4])
    _need(_PREFIX + 4 + header_len <= n, Reason.TRUNCATED, "header runs past the end of the bundle")
    try:
        raw = json.loads(bytes(data[_PREFIX + 4 : _PREFIX + 4 + header_len]))
    except (ValueError, RecursionError):
        raise BundleError(Reason.CORRUPT, "header is not JSON") from None
    _need(isinstance(raw, dict), Reason.CORRUPT, "header is not a JSON object")
    version = _field(raw, "version", int)
    _need(version >= 1, Reason.CORRUPT, f"bundle version {version} is not positive")
    return int(version)
