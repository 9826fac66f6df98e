"""One signing helper (edge.core.signing) and one time format (edge.core.timefmt)."""

from __future__ import annotations

import ast
import base64
import json
import os
import subprocess
import sys
from glob import glob
from pathlib import Path
from shutil import which

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.core import signing, timefmt
from edge.core.alert_message import AlertRejected, build_alert, build_status, verify_alert, verify_status
from edge.core.signing import Context, canonical_json
from edge.core.timefmt import TimeFormatError, format_utc, parse_utc
from tests.alertkit import event

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- time


def test_format_is_rfc3339_utc_with_milliseconds_and_z() -> None:
    assert format_utc(1796104800.1239) == "2026-12-01T06:00:00.123Z"
    assert format_utc(1796104800) == "2026-12-01T06:00:00.000Z"
    # Float noise in t*1000 must not turn .123 into .122.
    assert format_utc(parse_utc("2026-12-05T08:00:00.123Z")) == "2026-12-05T08:00:00.123Z"


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-01T06:00:00Z",
        "2026-12-01t06:00:00z",
        "2026-12-01T06:00:00.000Z",
        "2026-12-01T07:00:00+01:00",
        "2026-12-01T01:30:00-04:30",
        "2026-12-01 06:00:00Z",
        "2026-12-01T06:00Z",  # seconds left out, as people type a --since
    ],
)
def test_z_and_offsets_name_the_same_instant(text: str) -> None:
    assert parse_utc(text) == 1796104800.0


def test_forms_python_310_fromisoformat_rejects_are_read() -> None:
    # 3.10's fromisoformat rejects a Z and fractions other than 3 or 6 digits; RFC 3339 allows both.
    assert parse_utc("2026-12-01T06:00:00.5Z") == 1796104800.5
    assert parse_utc("2026-12-01T06:00:00.123456789Z") == pytest.approx(1796104800.123456789)
    assert parse_utc("2016-12-31T23:59:60Z") == parse_utc("2017-01-01T00:00:00Z")  # a leap second


def test_the_parser_does_not_rely_on_fromisoformat() -> None:
    tree = ast.parse((ROOT / "edge" / "core" / "timefmt.py").read_text())
    called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert "fromisoformat" not in called
    # Nor does any other module parse times its own way.
    for path in (ROOT / "edge").rglob("*.py"):
        text = path.read_text()
        assert "datetime.fromisoformat(" not in text and "dt.datetime.fromisoformat(" not in text, path


def _python310() -> str | None:
    found = which("python3.10")
    if found and subprocess.run([found, "-c", "pass"], capture_output=True).returncode == 0:
        return found
    candidates = sorted(glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
    return candidates[-1] if candidates else None


def test_z_times_parse_on_a_real_python_310() -> None:
    """JetPack 6 ships Python 3.10: the README's `--expires …Z` must work there."""
    py310 = _python310()
    if py310 is None:
        pytest.skip("Python 3.10 interpreter not installed (python3.10 or pyenv 3.10)")
    code = (
        "import sys, datetime\n"
        "from edge.core.timefmt import parse_utc, format_utc\n"
        "assert sys.version_info[:2] == (3, 10)\n"
        "try:\n"
        "    datetime.datetime.fromisoformat('2026-12-01T06:00:00Z')\n"
        "    raise SystemExit('this interpreter reads Z itself: not 3.10 semantics')\n"
        "except ValueError:\n"
        "    pass\n"
        "print(parse_utc('2026-12-01T06:00:00Z', '--expires'), format_utc(parse_utc('2026-12-01T06:00:00.5Z')))\n"
    )
    out = subprocess.run([py310, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1796104800.0", "2026-12-01T06:00:00.500Z"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("2026-12-01T06:00:00", "has no time zone; add Z"),
        ("2026-12-01", "is not an RFC 3339 time"),
        ("Z", "is not an RFC 3339 time"),
        ("2026-02-30T06:00:00Z", "is not a real date"),
        ("2026-12-01T06:00:00+25:00", "impossible offset"),
    ],
)
def test_bad_times_are_refused_naming_the_field(text: str, says: str) -> None:
    with pytest.raises(TimeFormatError, match=f"^--expires: .*{says}"):
        parse_utc(text, "--expires")


def test_a_bad_expires_exits_2_with_one_line(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "edge", "deployment", "report", "--since", "yesterday",
                          "--dir", str(tmp_path)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "--since: 'yesterday' is not an RFC 3339 time" in out.stderr


# --------------------------------------------------------------------------- signing


def test_contexts_are_prefix_free_and_separate_domains() -> None:
    values = [c.value for c in Context]
    assert len(set(values)) == len(values)
    assert not any(a != b and b.startswith(a) for a in values for b in values)
    key = Ed25519PrivateKey.generate()
    doc = {"seq": 1, "hash": "ab"}
    sig = signing.sign_document(Context.ALERT, doc, key)
    assert signing.verify_document(Context.ALERT, doc, sig, key.public_key())
    for other in Context:
        if other is not Context.ALERT:
            assert not signing.verify_document(other, doc, sig, key.public_key()), other


def test_an_alert_signature_never_verifies_as_a_status() -> None:
    key = Ed25519PrivateKey.generate()
    keys = {"dev-a": key.public_key()}
    alert = json.loads(build_alert(event(1), "dev-a", key, "det", "emb").payload)
    # Dress the signed alert up as a status: same bytes signed, other kind.
    forged = canonical_json({**alert, "type": "status"})
    with pytest.raises(AlertRejected, match="bad signature"):
        verify_status(forged, keys)
    status = build_status({"state": "online"}, "dev-a", key)
    assert verify_status(status, keys)["state"] == "online"
    as_alert = canonical_json({**json.loads(status), "type": "alert"})
    with pytest.raises(AlertRejected):
        verify_alert(as_alert, keys)


def test_an_ack_signature_never_passes_as_a_command(tmp_path: Path) -> None:
    from edge.device.watchlist.sync import ACK_FORMAT, CMD_FORMAT, CommandError, CommandVerifier, _signed_envelope

    key = Ed25519PrivateKey.generate()
    body = {"type": "wipe", "device_id": "dev-a", "nonce": "n1",
            "issued_at": format_utc(1796104800), "not_after": format_utc(1796108400)}  # fmt: skip
    ack = json.loads(_signed_envelope(ACK_FORMAT, body, key))
    as_cmd = json.dumps({**ack, "format": CMD_FORMAT}).encode()
    verifier = CommandVerifier([key.public_key()], "dev-a", tmp_path / "state.json", clock=lambda: 1796104801.0)
    with pytest.raises(CommandError, match="bad_signature"):
        verifier.verify(as_cmd)
    assert verifier.verify(_signed_envelope(CMD_FORMAT, body, key))["nonce"] == "n1"


def test_wire_forms_that_existed_before_still_verify() -> None:
    """Contexts of older kinds are the prefixes those messages were signed with: a command signed the
    old way (sort_keys JSON, b"lfr-edge-cmd/1\\n" prefix) and an alert signature are unchanged."""
    key = Ed25519PrivateKey.generate()
    body = {"type": "wipe", "device_id": "dev-a", "nonce": "n1", "issued_at": "2026-12-01T06:00:00.000Z"}
    old_bytes = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    old_sig = key.sign(b"lfr-edge-cmd/1\n" + old_bytes)
    assert signing.verify(Context.COMMAND, canonical_json(body), old_sig, key.public_key())
    assert Context.ALERT.value == b"lfr-edge alert v1\x00"
    assert Context.ALERT_ACK.value == b"lfr-edge-alert-ack/1\n"
    assert Context.AUDIT_CHECKPOINT.value == b"lfr-edge audit checkpoint v1\n"


def test_a_bundle_signs_through_the_helper_with_its_magic_as_context() -> None:
    from edge.core.watchlist.bundle import MAGIC, SIG_BYTES

    assert Context.WATCHLIST_BUNDLE.value == MAGIC
    key = Ed25519PrivateKey.generate()
    container = MAGIC + b"rest of the container"
    sig = signing.sign_framed(Context.WATCHLIST_BUNDLE, container, key)
    assert len(sig) == SIG_BYTES
    assert sig == signing.sign(Context.WATCHLIST_BUNDLE, b"rest of the container", key)
    assert signing.verify_framed(Context.WATCHLIST_BUNDLE, memoryview(container), sig, key.public_key())
    with pytest.raises(ValueError):
        signing.sign_framed(Context.WATCHLIST_BUNDLE, b"not a bundle", key)


def test_audit_records_use_the_one_canonical_form_and_old_logs_still_verify(tmp_path: Path) -> None:
    from edge.core.audit.log import GENESIS_HASH, AuditLog, legacy_canonical, list_segments, record_hash
    from edge.core.audit.verify import verify_log

    key = Ed25519PrivateKey.generate()
    log = AuditLog(tmp_path / "new", key)
    log.append("config", {"note": "Zoë", "ratio": 1.0, "tiny": 1e-7})
    log.close()
    raw = list_segments(tmp_path / "new")[0].read_bytes().splitlines()
    assert any("Zoë".encode() in line and b'"ratio":1,' in line and b"1e-7" in line for line in raw)
    assert all(canonical_json(json.loads(line)) == line for line in raw)
    assert verify_log(tmp_path / "new", key.public_key()).ok

    # A record as an older release wrote it (sort_keys JSON: ASCII escapes, 1.0) still verifies.
    old = tmp_path / "old"
    old.mkdir()
    t = "2026-12-01T06:00:00.000000Z"
    fields = {"note": "Zoë", "ratio": 1.0}
    rec = {"seq": 0, "time": t, "kind": "config", "fields": fields, "prev_hash": GENESIS_HASH,
           "hash": record_hash(0, t, "config", fields, GENESIS_HASH, legacy_canonical)}  # fmt: skip
    line = legacy_canonical(rec)
    assert b"\\u00eb" in line and b"1.0" in line
    (old / "segment-000000000000.jsonl").write_bytes(line + b"\n")
    report = verify_log(old, None)
    assert report.ok, report.problems
    # …and editing it is still caught.
    (old / "segment-000000000000.jsonl").write_bytes(line.replace(b"1.0", b"2.0") + b"\n")
    assert not verify_log(old, None).ok


def test_checkpoint_signature_is_the_helpers() -> None:
    from edge.core.audit.log import checkpoint_document, checkpoint_message, verify_signature

    key = Ed25519PrivateKey.generate()
    sig = signing.sign_document(Context.AUDIT_CHECKPOINT, checkpoint_document(4, "ab" * 32), key)
    assert checkpoint_message(4, "ab" * 32) == Context.AUDIT_CHECKPOINT.value + canonical_json({"seq": 4, "hash": "ab" * 32})
    assert verify_signature(key.public_key(), 4, "ab" * 32, base64.b64encode(sig).decode())
    alert_sig = signing.sign_document(Context.ALERT, checkpoint_document(4, "ab" * 32), key)
    assert not verify_signature(key.public_key(), 4, "ab" * 32, base64.b64encode(alert_sig).decode())


def test_no_module_formats_or_parses_times_its_own_way() -> None:
    for path in (ROOT / "edge").rglob("*.py"):
        if path.name == "timefmt.py":
            continue
        text = path.read_text()
        for needle in ("def iso_utc", "def utc_iso", "def parse_time", 'strftime("%Y-%m-%dT'):
            assert needle not in text, f"{path}: {needle}"
    assert timefmt.EXAMPLE.endswith("Z")
