"""The bundle verifier: every refusal reason, every single-byte alteration, and parser fuzzing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.core.errors import InputError
from edge.core.keys import generate_backoffice_keys, key_id, raw_public_bytes, seal
from edge.core.watchlist.bundle import (
    MAGIC,
    WRAP_INFO,
    BundleError,
    Reason,
    build_bundle,
    read_header,
    verify_bundle,
)
from edge.core.watchlist.model import Watchlist
from tests.watchlist_kit import EMBEDDER, Kit, make_kit


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    return make_kit(tmp_path_factory.mktemp("wl-bundle"))


def _verify(kit: Kit, data: bytes, current: int | None = None, **kw: object) -> Watchlist:
    return verify_bundle(
        data,
        kw.pop("device", kit.device),  # type: ignore[arg-type]
        kw.pop("signers", [kit.backoffice.ed25519_public]),  # type: ignore[arg-type]
        current,
        kw.pop("embedder", EMBEDDER),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_valid_bundle_opens_with_subjects_templates_and_header(kit: Kit) -> None:
    data, templates = kit.bundle(7, n_subjects=3, per_subject=2)
    wl = _verify(kit, data)
    assert wl.version == 7
    assert [s.subject_id for s in wl.subjects] == ["subject-7-0", "subject-7-1", "subject-7-2"]
    assert [s.category for s in wl.subjects] == ["missing", "wanted", "missing"]
    assert wl.template_subject.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_allclose(wl.templates, templates, atol=1e-6)
    assert wl.signer_key_id == kit.backoffice.ed25519_id
    assert wl.embedder_sha256 == EMBEDDER
    assert wl.templates.dtype == np.float32 and wl.templates.flags.c_contiguous


def test_float16_bundle_is_half_size_and_close(kit: Kit) -> None:
    d32, templates = kit.bundle(3, n_subjects=50, per_subject=1, seed=1)
    d16, _ = kit.bundle(3, n_subjects=50, per_subject=1, seed=1, dtype="float16")
    assert len(d16) < 0.75 * len(d32)
    wl = _verify(kit, d16)
    np.testing.assert_allclose(np.linalg.norm(wl.templates, axis=1), 1.0, atol=1e-5)
    # What matters is the score a probe gets: float16 templates move cosines by < 1e-3.
    rng = np.random.default_rng(5)
    probes = templates[rng.integers(0, 50, 200)] + rng.standard_normal((200, 128)).astype(np.float32) * 0.05
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    diff = np.abs(probes @ wl.templates.T - probes @ templates.T)
    assert diff.max() < 1e-3


def test_multi_recipient_bundle_opens_on_each_device(kit: Kit) -> None:
    data, _ = kit.bundle(2, recipients=[kit.device.x25519_public, kit.other_device.x25519_public])
    assert _verify(kit, data).version == 2
    assert _verify(kit, data, device=kit.other_device).version == 2


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("other_device", Reason.NOT_ADDRESSED),
        ("unknown_signer", Reason.UNKNOWN_SIGNER),
        ("rollback_equal", Reason.ROLLBACK),
        ("rollback_older", Reason.ROLLBACK),
        ("expired", Reason.EXPIRED),
        ("model", Reason.MODEL_MISMATCH),
        ("oversize", Reason.OVERSIZE),
        ("truncated", Reason.TRUNCATED),
        ("empty", Reason.TRUNCATED),
        ("not_a_bundle", Reason.CORRUPT),
    ],
)
def test_each_refusal_has_its_reason_and_one_line(kit: Kit, case: str, reason: str) -> None:
    data, _ = kit.bundle(5)
    current: int | None = None
    kw: dict[str, object] = {}
    if case == "other_device":
        data, _ = kit.bundle(5, recipients=[kit.other_device.x25519_public])
    elif case == "unknown_signer":
        rogue = generate_backoffice_keys(kit.root / f"rogue-{time.monotonic_ns()}")
        data, _ = kit.bundle(5, signer=rogue.ed25519)
    elif case == "rollback_equal":
        current = 5
    elif case == "rollback_older":
        current = 9
    elif case == "expired":
        kw["now"] = time.time() + 2 * 24 * 3600
    elif case == "model":
        kw["embedder"] = "cd" * 32
    elif case == "oversize":
        kw["max_bytes"] = len(data) - 1
    elif case == "truncated":
        data = data[:40]
    elif case == "empty":
        data = b""
    elif case == "not_a_bundle":
        data = b"PK\x03\x04" + os.urandom(200)
    with pytest.raises(BundleError) as err:
        _verify(kit, data, current, **kw)
    assert err.value.reason == reason
    assert isinstance(err.value, InputError)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"watchlist bundle refused ({reason})")


def test_a_list_cut_another_way_than_the_device_cuts_is_refused_naming_both(kit: Kit) -> None:
    """Templates from keypoint chips on a device that cuts with the face mesh (or the other way
    round, or another mesh) would score below the calibrated thresholds: refused like another embedder."""
    mesh, other = "cd" * 32, "ef" * 32
    keypoint_list, _ = kit.bundle(5)
    mesh_list, _ = kit.bundle(6, landmarks=mesh)
    assert read_header(mesh_list, [kit.backoffice.ed25519_public], 1 << 30).landmarks_sha256 == mesh
    assert _verify(kit, mesh_list, landmarks_sha256=mesh).version == 6
    assert _verify(kit, keypoint_list).version == 5
    for data, device_cuts, said in (
        (keypoint_list, mesh, "templates were cut with detector keypoints, this device cuts with face mesh cdcdcdcdcdcd…"),
        (mesh_list, None, "templates were cut with face mesh cdcdcdcdcdcd…, this device cuts with detector keypoints"),
        (mesh_list, other, "this device cuts with face mesh efefefefefef…"),
    ):
        with pytest.raises(BundleError) as err:
            _verify(kit, data, landmarks_sha256=device_cuts)
        assert err.value.reason == Reason.MODEL_MISMATCH and said in str(err.value)
    # Back-office tools that skip the model check open either.
    assert _verify(kit, mesh_list, embedder=None).version == 6


def test_no_trusted_signers_refuses(kit: Kit) -> None:
    data, _ = kit.bundle(1)
    with pytest.raises(BundleError) as err:
        _verify(kit, data, signers=[])
    assert err.value.reason == Reason.UNKNOWN_SIGNER


def _regions(data: bytes) -> dict[str, range]:
    """Byte ranges of the container's parts, from its documented layout."""
    (hlen,) = struct.unpack(">I", data[16:20])
    header = json.loads(data[20 : 20 + hlen])
    wrapped = header["recipients"][0]["wrapped_key"].encode()
    w0 = data.index(wrapped, 20)
    p0 = 20 + hlen + 8
    return {
        "magic": range(0, 8),
        "signer_id": range(8, 16),
        "header_len": range(16, 20),
        "header": range(20, w0),
        "wrapped_key": range(w0, w0 + len(wrapped)),
        "header_rest": range(w0 + len(wrapped), 20 + hlen),
        "payload_len": range(20 + hlen, p0),
        "nonce": range(p0, p0 + 12),
        "ciphertext": range(p0 + 12, len(data) - 80),
        "gcm_tag": range(len(data) - 80, len(data) - 64),
        "signature": range(len(data) - 64, len(data)),
    }


def test_flipping_any_single_byte_is_refused(kit: Kit) -> None:
    """Exhaustive over a small bundle: every byte of every region, flipped, is refused."""
    data, _ = kit.bundle(4, n_subjects=2, per_subject=1)
    regions = _regions(data)
    assert all(len(r) > 0 for r in regions.values())
    seen_reasons: dict[str, set[str]] = {name: set() for name in regions}
    for name, r in regions.items():
        for i in r:
            altered = bytearray(data)
            altered[i] ^= 0x5A
            with pytest.raises(BundleError) as err:
                _verify(kit, bytes(altered))
            seen_reasons[name].add(err.value.reason)
    assert seen_reasons["signature"] == {Reason.BAD_SIGNATURE}
    assert seen_reasons["ciphertext"] == {Reason.BAD_SIGNATURE}
    assert seen_reasons["wrapped_key"] == {Reason.BAD_SIGNATURE}
    assert Reason.UNKNOWN_SIGNER in seen_reasons["signer_id"]


def test_rewrapped_signed_bundle_with_bad_content_is_refused_as_corrupt(kit: Kit) -> None:
    """Even a validly signed bundle (a buggy back office) with a broken payload is refused cleanly."""
    data = _signed_container(kit, header=None, plaintext=b"\x00\x00\x00\x05{bad}")
    with pytest.raises(BundleError) as err:
        _verify(kit, data)
    assert err.value.reason == Reason.CORRUPT


def test_read_header_needs_no_device_key(kit: Kit) -> None:
    data, _ = kit.bundle(11)
    h = read_header(data, [kit.backoffice.ed25519_public], 1 << 30)
    assert (
        h.version == 11 and h.recipients == (kit.device.x25519_id,) and h.signer == kit.backoffice.ed25519_id
    )
    assert b"subject-11" not in data  # subject ids travel only inside the ciphertext


def test_build_refuses_bad_input(kit: Kit) -> None:
    from edge.core.types import Subject

    t = np.ones((2, 128), np.float32)
    common = {
        "signer": kit.backoffice.ed25519,
        "recipients": [kit.device.x25519_public],
        "version": 1,
        "expires_at": time.time() + 100,
        "embedder_sha256": EMBEDDER,
    }
    with pytest.raises(InputError, match="no template"):
        build_bundle(
            subjects=[Subject("a"), Subject("b")], templates=t, template_subject=np.array([0, 0]), **common
        )
    with pytest.raises(InputError, match="unique"):
        build_bundle(
            subjects=[Subject("a"), Subject("a")], templates=t, template_subject=np.array([0, 1]), **common
        )
    with pytest.raises(InputError, match="recipient"):
        build_bundle(
            subjects=[Subject("a")],
            templates=t[:1],
            template_subject=np.array([0]),
            **{**common, "recipients": []},
        )


# --------------------------------------------------------------------------- fuzzing


def _signed_container(kit: Kit, header: bytes | None, plaintext: bytes) -> bytes:
    """A container signed by the trusted key around arbitrary header/payload bytes."""
    signer = kit.backoffice.ed25519
    cek = AESGCM.generate_key(bit_length=256)
    if header is None:
        h = {
            "format": 1,
            "version": 1,
            "created_at": "2020-01-01T00:00:00Z",
            "expires_at": "2999-01-01T00:00:00Z",
            "embedder_sha256": EMBEDDER,
            "signer": key_id(signer.public_key()),
            "recipients": [
                {
                    "key_id": kit.device.x25519_id,
                    "wrapped_key": base64.b64encode(seal(kit.device.x25519_public, cek, WRAP_INFO)).decode(),
                }
            ],
            "payload": {"cipher": "AES-256-GCM", "dtype": "float32"},
        }
        header = json.dumps(h).encode()
    sid = hashlib.sha256(raw_public_bytes(signer.public_key())).digest()[:8]
    head = MAGIC + sid + struct.pack(">I", len(header)) + header
    nonce = os.urandom(12)
    payload = nonce + AESGCM(cek).encrypt(nonce, plaintext, head)
    body = head + struct.pack(">Q", len(payload)) + payload
    return body + signer.sign(body)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=4096))
def test_fuzz_random_bytes(kit: Kit, data: bytes) -> None:
    with pytest.raises(BundleError):
        _verify(kit, data)


@FUZZ
@given(
    cut=st.integers(min_value=0), edits=st.lists(st.tuples(st.integers(0), st.integers(0, 255)), max_size=6)
)
def test_fuzz_mutated_valid_bundle(kit: Kit, cut: int, edits: list[tuple[int, int]]) -> None:
    data, _ = _small_bundle(kit)
    b = bytearray(data[: max(0, len(data) - cut % (len(data) + 1))] if cut % 3 == 0 else data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    try:
        wl = _verify(kit, bytes(b))
    except BundleError:
        return
    assert bytes(b) == data and wl.version == 1  # only the untouched bundle may pass


@FUZZ
@given(
    header=st.binary(max_size=512)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=6),
        max_leaves=30,
    ).map(lambda v: json.dumps(v).encode())
)
def test_fuzz_signed_garbage_header(kit: Kit, header: bytes) -> None:
    with pytest.raises(BundleError):
        _verify(kit, _signed_container(kit, header, b""))


@FUZZ
@given(
    meta=st.dictionaries(
        st.sampled_from(
            ["subject_ids", "categories", "priorities", "thresholds", "n_templates", "dim", "dtype", "x"]
        ),
        st.none()
        | st.integers(-3, 5)
        | st.text(max_size=5)
        | st.lists(st.integers(-2, 3) | st.text(max_size=3) | st.none(), max_size=4),
    ),
    tail=st.binary(max_size=64),
    bad_len=st.booleans(),
)
def test_fuzz_signed_garbage_payload(kit: Kit, meta: dict[str, object], tail: bytes, bad_len: bool) -> None:
    m = json.dumps(meta).encode()
    plaintext = struct.pack(">I", len(m) + (7 if bad_len else 0)) + m + tail
    try:
        wl = _verify(kit, _signed_container(kit, None, plaintext))
    except BundleError:
        return
    assert isinstance(wl, Watchlist)  # a consistent payload may be valid; nothing else may escape


_SMALL: dict[int, tuple[bytes, object]] = {}


def _small_bundle(kit: Kit) -> tuple[bytes, object]:
    if id(kit) not in _SMALL:
        _SMALL[id(kit)] = kit.bundle(1, n_subjects=2, per_subject=1)
    return _SMALL[id(kit)]


def test_kit_paths_are_private(kit: Kit) -> None:
    mode = (kit.root / "device-keys").stat().st_mode & 0o777
    assert mode == 0o700
    for p in Path(kit.root / "device-keys").glob("*.pem"):
        if ".pub." not in p.name:
            assert p.stat().st_mode & 0o777 == 0o600


def test_signed_payload_with_nan_template_is_refused(kit: Kit) -> None:
    meta = json.dumps(
        {"subject_ids": ["a"], "categories": ["wanted"], "priorities": [1], "thresholds": [None],
         "n_templates": 1, "dim": 4, "dtype": "float32", "metadata": {}}
    ).encode()  # fmt: skip
    for row in ([np.nan, 0, 0, 1], [0, 0, 0, 0], [np.inf, 1, 1, 1]):
        plaintext = struct.pack(">I", len(meta)) + meta + np.zeros(1, "<i4").tobytes()
        plaintext += np.array(row, "<f4").tobytes()
        with pytest.raises(BundleError, match="non-finite or zero"):
            _verify(kit, _signed_container(kit, None, plaintext))
    good = (
        struct.pack(">I", len(meta))
        + meta
        + np.zeros(1, "<i4").tobytes()
        + np.array([0, 0, 3, 4], "<f4").tobytes()
    )
    wl = _verify(kit, _signed_container(kit, None, good))
    np.testing.assert_allclose(wl.templates, [[0, 0, 0.6, 0.8]])


def test_expiry_times_read_the_same_with_z_or_an_offset() -> None:
    """The README's `--expires …Z` form is read without relying on Python 3.11's parser."""
    from edge.core.timefmt import parse_utc as parse_time

    z = parse_time("2026-12-01T06:00:00Z", "--expires")
    assert z == parse_time("2026-12-01T06:00:00z", "--expires") == parse_time("2026-12-01T07:00:00+01:00", "--expires")
    assert z == 1796104800.0
    with pytest.raises(InputError, match="no time zone"):
        parse_time("2026-12-01T06:00:00", "--expires")
    with pytest.raises(InputError, match="not an RFC 3339 time"):
        parse_time("Z", "--expires")
