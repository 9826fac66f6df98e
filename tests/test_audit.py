"""The audit log is tamper-evident, rotates without breaking the chain, and yields deployment records.

Every tamper test changes the log the way an insider with a text editor would, then runs the real
`lfr-edge audit verify` and checks that it fails (exit 2) and names the record that was touched.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.cli.main import main
from edge.core.audit import log as al
from edge.core.audit.log import AuditLog, canonical, checkpoint_message, list_segments, record_hash
from edge.core.config import load_config
from edge.core.errors import EXIT_VERIFY
from edge.core.keys import generate_device_keys, public_pem
from edge.core.types import Counters, Subject
from edge.core.vision.scoring import load_scoring
from edge.core.watchlist.model import Watchlist
from edge.device.audit.deployment import record_deployment
from edge.device.audit.service import audit_alert, audit_config_start, audit_stop, open_audit, watchlist_hook
from tests.broker import broker_factory, plain_broker  # noqa: F401  (pytest fixtures)
from tests.mqtt_collect import Collector

EVERY = 5


# ----------------------------------------------------------------------------------- helpers


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def pub_file(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    p = tmp_path / "device_ed25519.pub.pem"
    p.write_bytes(public_pem(key.public_key()))
    return p


def write_log(directory: Path, key: Ed25519PrivateKey, n_alerts: int = 12, **kw: Any) -> AuditLog:
    log = AuditLog(directory, key, checkpoint_every=EVERY, fsync=False, **kw)
    log.append(al.SERVICE_START, {"device_id": "van-3", "location": "Test Street"})
    for i in range(n_alerts):
        log.append(al.ALERT, {"alert_id": f"a-{i:04d}", "subject_id": f"S-{i:04d}"})
    log.close()
    return log


def verify(capsys: pytest.CaptureFixture[str], directory: Path, pub: Path | None) -> tuple[int, dict[str, Any]]:
    argv = ["audit", "verify", "--dir", str(directory), "--json"] + (["--pub", str(pub)] if pub else [])
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def lines_of(directory: Path) -> tuple[Path, list[bytes]]:
    (seg,) = list_segments(directory)
    return seg, seg.read_bytes().splitlines(keepends=True)


def line_index(lines: list[bytes], seq: int) -> int:
    return next(i for i, raw in enumerate(lines) if json.loads(raw)["seq"] == seq)


def first_problem(rep: dict[str, Any]) -> dict[str, Any]:
    assert rep["ok"] is False and rep["problems"], rep
    return dict(rep["problems"][0])


# ----------------------------------------------------------------------------------- intact


def test_untouched_log_verifies_with_signed_checkpoints(
    tmp_path: Path, key: Ed25519PrivateKey, pub_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_log(tmp_path / "audit", key)
    code, rep = verify(capsys, tmp_path / "audit", pub_file)
    assert code == 0 and rep["ok"]
    # 13 records + a checkpoint after every 5 + one at close
    assert rep["checkpoints"] == 3 and rep["checkpoints_verified"] == 3
    assert rep["unsigned_tail"] == 0
    # text mode says INTACT
    assert main(["audit", "verify", "--dir", str(tmp_path / "audit"), "--pub", str(pub_file)]) == 0
    assert "INTACT" in capsys.readouterr().out


def test_records_are_canonical_chained_json_lines(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    write_log(tmp_path / "audit", key, n_alerts=2)
    _, lines = lines_of(tmp_path / "audit")
    prev = al.GENESIS_HASH
    for i, raw in enumerate(lines):
        rec = json.loads(raw)
        assert set(rec) == {"seq", "time", "kind", "fields", "prev_hash", "hash"}
        assert rec["seq"] == i and rec["prev_hash"] == prev
        assert rec["hash"] == record_hash(rec["seq"], rec["time"], rec["kind"], rec["fields"], rec["prev_hash"])
        assert raw == canonical(rec) + b"\n"
        prev = rec["hash"]
    assert json.loads(lines[-1])["kind"] == al.CHECKPOINT  # close signs the head


# ----------------------------------------------------------------------------------- tampering


def test_one_byte_edited_is_named(
    tmp_path: Path, key: Ed25519PrivateKey, pub_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "audit"
    write_log(d, key)
    seg, lines = lines_of(d)
    i = line_index(lines, 7)
    assert b'"S-0005"' in lines[i]  # seq 5 is a checkpoint
    lines[i] = lines[i].replace(b'"S-0005"', b'"S-0009"')  # one byte: someone else was alerted on
    seg.write_bytes(b"".join(lines))
    code, rep = verify(capsys, d, pub_file)
    p = first_problem(rep)
    assert code == EXIT_VERIFY
    assert (p["seq"], p["line"], p["segment"]) == (7, i + 1, seg.name)
    assert "edited" in p["what"]
    assert len(rep["problems"]) == 1  # the next record still links to the stored hash: one culprit


def test_every_single_byte_edit_is_detected(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    """Not only values: any byte of a record line (keys, punctuation, hashes) is covered."""
    from edge.core.audit.verify import verify_log

    d = tmp_path / "audit"
    write_log(d, key, n_alerts=1)
    seg, lines = lines_of(d)
    original = b"".join(lines)
    i = line_index(lines, 1)
    start = sum(len(x) for x in lines[:i])
    for off in range(start, start + len(lines[i]) - 1):  # every byte but the newline
        data = bytearray(original)
        data[off] ^= 0x01
        seg.write_bytes(bytes(data))
        rep = verify_log(d, key.public_key())
        assert not rep.ok, f"flipping byte {off - start} of record 1 went unnoticed"
        assert rep.problems[0].line == i + 1


def test_deleted_record_is_named(
    tmp_path: Path, key: Ed25519PrivateKey, pub_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "audit"
    write_log(d, key)
    seg, lines = lines_of(d)
    i = line_index(lines, 7)
    del lines[i]
    seg.write_bytes(b"".join(lines))
    code, rep = verify(capsys, d, pub_file)
    p = first_problem(rep)
    assert code == EXIT_VERIFY
    assert p["seq"] == 8 and p["line"] == i + 1
    assert "seq 7 missing" in p["what"] and "deleted" in p["what"]


def test_swapped_records_are_named(
    tmp_path: Path, key: Ed25519PrivateKey, pub_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "audit"
    write_log(d, key)
    seg, lines = lines_of(d)
    i, j = line_index(lines, 7), line_index(lines, 8)
    lines[i], lines[j] = lines[j], lines[i]
    seg.write_bytes(b"".join(lines))
    code, rep = verify(capsys, d, pub_file)
    p = first_problem(rep)
    assert code == EXIT_VERIFY
    assert p["seq"] == 8 and p["line"] == i + 1
    assert "reordered" in p["what"]
    assert any(q["seq"] == 7 and q["line"] == j + 1 for q in rep["problems"])


def test_inserted_record_is_named(
    tmp_path: Path, key: Ed25519PrivateKey, pub_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A well-formed record with a correct hash, chained to its predecessor, slipped in."""
    d = tmp_path / "audit"
    write_log(d, key)
    seg, lines = lines_of(d)
    i = line_index(lines, 6)
    before = json.loads(lines[i])
    fields = {"alert_id": "a-fake", "subject_id": "S-9999"}
    t = before["time"]
    fake = {"seq": 7, "time": t, "kind": al.ALERT, "fields": fields, "prev_hash": before["hash"],
            "hash": record_hash(7, t, al.ALERT, fields, before["hash"])}  # fmt: skip
    lines.insert(i + 1, canonical(fake) + b"\n")
    seg.write_bytes(b"".join(lines))
    code, rep = verify(capsys, d, pub_file)
    p = first_problem(rep)
    assert code == EXIT_VERIFY
    assert p["seq"] == 7 and p["line"] == i + 3  # the genuine seq 7, now one line further down
    assert f"line {i + 2}" in p["what"] and "inserted" in p["what"]


def test_forged_checkpoint_is_named(
    tmp_path: Path, key: Ed25519PrivateKey, pub_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "audit"
    write_log(d, key)
    seg, lines = lines_of(d)
    i = next(k for k, raw in enumerate(lines) if json.loads(raw)["kind"] == al.CHECKPOINT)
    cp = json.loads(lines[i])
    other = Ed25519PrivateKey.generate()
    f = cp["fields"]
    f["signature"] = base64.b64encode(other.sign(checkpoint_message(f["covers_seq"], f["covers_hash"]))).decode()
    cp["hash"] = record_hash(cp["seq"], cp["time"], cp["kind"], f, cp["prev_hash"])
    lines[i] = canonical(cp) + b"\n"
    # re-chain the rest so that only the signature can give the forgery away
    prev = cp["hash"]
    for k in range(i + 1, len(lines)):
        r = json.loads(lines[k])
        if r["kind"] == al.CHECKPOINT:
            break
        r["prev_hash"] = prev
        r["hash"] = prev = record_hash(r["seq"], r["time"], r["kind"], r["fields"], prev)
        lines[k] = canonical(r) + b"\n"
    seg.write_bytes(b"".join(lines[: k]))  # drop the later (genuine) checkpoint that would break
    code, rep = verify(capsys, d, pub_file)
    p = first_problem(rep)
    assert code == EXIT_VERIFY
    assert p["seq"] == cp["seq"] and p["line"] == i + 1
    assert "forged" in p["what"]


def test_rewritten_history_fails_at_the_next_signed_checkpoint(
    tmp_path: Path, key: Ed25519PrivateKey, pub_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Editing a record and recomputing every later hash defeats a bare chain, not the signatures."""
    d = tmp_path / "audit"
    write_log(d, key)
    seg, lines = lines_of(d)
    recs = [json.loads(x) for x in lines]
    recs[3]["fields"]["subject_id"] = "S-changed"
    prev = recs[2]["hash"]
    for r in recs[3:]:
        if r["kind"] == al.CHECKPOINT:  # the attacker can re-point a checkpoint, not re-sign it
            r["fields"]["covers_hash"] = prev
        r["prev_hash"] = prev
        r["hash"] = prev = record_hash(r["seq"], r["time"], r["kind"], r["fields"], prev)
    seg.write_bytes(b"".join(canonical(r) + b"\n" for r in recs))
    code, rep = verify(capsys, d, pub_file)
    p = first_problem(rep)
    first_cp = next(r for r in recs if r["kind"] == al.CHECKPOINT)
    assert code == EXIT_VERIFY and p["seq"] == first_cp["seq"]
    assert "rewritten" in p["what"]


def test_removed_checkpoints_are_noticed(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    from edge.core.audit.verify import verify_log

    d = tmp_path / "audit"
    write_log(d, key, n_alerts=30)
    seg, lines = lines_of(d)
    recs = [json.loads(x) for x in lines if json.loads(x)["kind"] != al.CHECKPOINT]
    prev = al.GENESIS_HASH
    for n, r in enumerate(recs):
        r["seq"], r["prev_hash"] = n, prev
        r["hash"] = prev = record_hash(n, r["time"], r["kind"], r["fields"], prev)
    seg.write_bytes(b"".join(canonical(r) + b"\n" for r in recs))
    rep = verify_log(d, key.public_key(), checkpoint_every=EVERY)
    assert not rep.ok and "without a signed checkpoint" in rep.problems[0].what


# ----------------------------------------------------------------------------------- rotation and retention


def test_rotation_keeps_the_chain_verifiable(
    tmp_path: Path, key: Ed25519PrivateKey, pub_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "audit"
    write_log(d, key, n_alerts=60, segment_bytes=4096, max_mb=1.0)
    segs = list_segments(d)
    assert len(segs) >= 3
    for seg in segs[1:]:
        first = json.loads(seg.read_bytes().splitlines()[0])
        assert first["kind"] == al.SEGMENT_START
        assert seg.name == al.segment_name(first["seq"])
    code, rep = verify(capsys, d, pub_file)
    assert code == 0, rep
    assert rep["segments"] == len(segs)
    # a restart appends to the newest segment and the chain goes on
    log = AuditLog(d, key, checkpoint_every=EVERY, fsync=False, segment_bytes=4096)
    log.append(al.SERVICE_START, {})
    log.close()
    assert verify(capsys, d, pub_file)[0] == 0
    # a whole middle segment deleted by hand is named
    segs = list_segments(d)
    segs[1].unlink()
    code, rep = verify(capsys, d, pub_file)
    p = first_problem(rep)
    assert code == EXIT_VERIFY and p["segment"] == segs[2].name and p["line"] == 1 and "missing" in p["what"]


def test_size_cap_prunes_whole_segments_and_records_it(
    tmp_path: Path, key: Ed25519PrivateKey, pub_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "audit"
    write_log(d, key, n_alerts=150, segment_bytes=4096, max_mb=12 * 1024 / 2**20)  # 12 KiB cap
    segs = list_segments(d)
    assert sum(p.stat().st_size for p in segs) < 12 * 1024 + 4096 + 2048
    assert segs[0].name != al.segment_name(0)  # the head was pruned
    recs = [json.loads(x) for p in segs for x in p.read_bytes().splitlines()]
    prunes = [r for r in recs if r["kind"] == al.AUDIT_PRUNED]
    assert prunes and prunes[-1]["fields"]["reason"] == "size"
    assert prunes[-1]["fields"]["last_seq"] == recs[0]["seq"] - 1
    code, rep = verify(capsys, d, pub_file)
    assert code == 0, rep
    # deleting the oldest remaining segment by hand (no prune record for it) is tampering
    segs[0].unlink()
    code, rep = verify(capsys, d, pub_file)
    assert code == EXIT_VERIFY and "oldest records were deleted" in first_problem(rep)["what"]


def test_retention_prunes_old_segments(
    tmp_path: Path, key: Ed25519PrivateKey, pub_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "audit"
    now = [1_700_000_000.0]
    write_log(d, key, n_alerts=40, segment_bytes=4096, retention_days=30, clock=lambda: now[0])
    n_before = len(list_segments(d))
    now[0] += 31 * 86400  # a month later the service starts again
    write_log(d, key, n_alerts=3, segment_bytes=4096, retention_days=30, clock=lambda: now[0])
    segs = list_segments(d)
    assert len(segs) < n_before
    recs = [json.loads(x) for p in segs for x in p.read_bytes().splitlines()]
    assert any(r["kind"] == al.AUDIT_PRUNED and r["fields"]["reason"] == "retention" for r in recs)
    assert verify(capsys, d, pub_file)[0] == 0


def test_torn_last_line_is_recovered_and_recorded(
    tmp_path: Path, key: Ed25519PrivateKey, pub_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "audit"
    write_log(d, key, n_alerts=2)
    (seg,) = list_segments(d)
    with seg.open("ab") as f:
        f.write(b'{"fields":{"alert_id":"a-')  # power cut in the middle of a write
    code, rep = verify(capsys, d, pub_file)
    assert code == 0 and any("incomplete last line" in w for w in rep["warnings"])
    log = AuditLog(d, key, checkpoint_every=EVERY, fsync=False)
    log.close()
    code, rep = verify(capsys, d, pub_file)
    assert code == 0 and not rep["warnings"]
    kinds = [json.loads(x)["kind"] for x in seg.read_bytes().splitlines()]
    assert al.AUDIT_RECOVERED in kinds


def _append_from_another_process(directory: str, pem: bytes, tag: str, n: int) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(pem, None)
    log = AuditLog(directory, key, checkpoint_every=EVERY, fsync=False, segment_bytes=4096)
    for i in range(n):
        log.append(al.ALERT, {"alert_id": f"{tag}-{i}", "subject_id": "S-1"})
    log.close()


def test_two_processes_appending_at_once_keep_one_chain(
    tmp_path: Path, key: Ed25519PrivateKey, pub_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service and a CLI command (e.g. a watchlist install) may write at the same time."""
    import multiprocessing as mp

    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    d = tmp_path / "audit"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_from_another_process, args=(str(d), pem, t, 60)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    code, rep = verify(capsys, d, pub_file)
    assert code == 0, rep["problems"][:3]
    ids = [r.fields["alert_id"] for r in al.iter_records(d) if r.kind == al.ALERT]
    assert sorted(ids) == sorted(f"{t}-{i}" for t in "ab" for i in range(60))


# ----------------------------------------------------------------------------------- no faces in the log


def test_fields_refuse_images_and_embeddings(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = AuditLog(tmp_path / "audit", key, fsync=False)
    emb = np.ones(128, np.float32) / np.sqrt(128)
    with pytest.raises(TypeError):
        log.append(al.ALERT, {"crop": b"\xff\xd8\xff\xe0JFIF"})
    with pytest.raises(TypeError):
        log.append(al.ALERT, {"embedding": emb})
    with pytest.raises(ValueError):
        log.append(al.ALERT, {"embedding": base64.b64encode(emb.tobytes()).decode()})
    with pytest.raises(ValueError):
        log.append(al.ALERT, {"embedding": emb.tolist()})  # 128 numbers: more items than any record needs
    assert log.next_seq == 0  # nothing was written


def test_published_records_are_the_logged_lines(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    sent: list[bytes] = []
    log = AuditLog(tmp_path / "audit", key, checkpoint_every=EVERY, fsync=False, publish=sent.append)
    for i in range(6):
        log.append(al.ALERT, {"alert_id": f"a{i}", "subject_id": "S-1"})
    log.close()
    (seg,) = list_segments(tmp_path / "audit")
    assert sent == seg.read_bytes().splitlines()


def test_a_failing_publish_hook_never_loses_the_local_record(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    def broken(_: bytes) -> None:
        raise ConnectionError("broker gone")

    log = AuditLog(tmp_path / "audit", key, fsync=False, publish=broken)
    log.append(al.ALERT, {"alert_id": "a1", "subject_id": "S-1"})
    log.close()
    assert [r.kind for r in al.iter_records(tmp_path / "audit")] == [al.ALERT, al.CHECKPOINT]


# ----------------------------------------------------------------------------------- config start, deployment report


def write_config(tmp_path: Path, **matching: Any) -> Path:
    doc = {
        "device": {"id": "van-3", "location": "Test Street, Cardiff", "data_dir": str(tmp_path / "data"),
                   "keys_dir": str(tmp_path / "keys")},
        "audit": {"checkpoint_every": EVERY},
        "matching": matching,
        "alerts": {"allow_unsealed": True, "allow_unsealed_reason": "test rig: no back-office sealing key"},
    }  # fmt: skip
    p = tmp_path / "lfr-edge.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def watchlist(version: int, n: int) -> Watchlist:
    t = np.eye(n, 128, dtype=np.float32)
    subjects = tuple(Subject(f"S-{i}") for i in range(n))
    return Watchlist(version, 1.7e9, 4.1e9, subjects, t, np.arange(n, dtype=np.int32), "abcd1234abcd1234")


def test_start_records_config_models_thresholds_and_below_floor_override(tmp_path: Path) -> None:
    floor = load_scoring("dlib_resnet_v1_int8").floor
    low = round(floor - 1.0, 3)  # S-norm units, a full unit below the embedder's floor
    path = write_config(tmp_path, threshold=low, allow_below_floor=True, below_floor_reason="trial approved by DCI X")
    cfg = load_config(path)
    generate_device_keys(cfg.device.keys_dir)
    log = open_audit(cfg)
    audit_config_start(log, cfg)
    log.close()
    recs = {r.kind: r.fields for r in al.iter_records(tmp_path / "data" / "audit")}
    from edge.core.config import config_hash

    assert recs[al.CONFIG]["config_hash"] == config_hash(cfg)
    assert recs[al.MODELS]["embedder"]["id"] == cfg.models.embedder
    th = recs[al.THRESHOLDS]
    assert th["threshold"] == low and th["floor"] == round(floor, 4) and th["units"] == "snorm"
    assert th["operating_point"] == "explicit" and th["expected_false_alerts_per_10k_faces"] > 1.0
    override = recs[al.BELOW_FLOOR_OVERRIDE]
    assert override["in_use"] is True and override["reason"] == "trial approved by DCI X"
    assert override["below"] == {"threshold": low}
    # verified with the config alone: the key comes from device.keys_dir
    assert main(["audit", "verify", "--config", str(path)]) == 0


def run_deployment(
    cfg: Any, wl: Watchlist, n_alerts: int, counters: Counters, expire: bool = False
) -> dict[str, Any]:
    log = open_audit(cfg)
    audit_config_start(log, cfg, watchlist=wl)
    hook = watchlist_hook(log)
    hook("refused", {"reason": "rollback", "message": "version 1 <= 2", "source": "mqtt"})
    for i in range(n_alerts):
        audit_alert(log, f"alert-{i}", f"S-{i % 3}", score=0.71, track_id=i, watchlist_version=wl.version)
    if expire:
        hook("expired", {"version": wl.version, "expires_at": "2030-01-01T00:00:00Z"})
    dep = record_deployment(log, counters, cfg, wl)
    audit_stop(log)
    return dep


def test_deployment_report_counts_a_synthetic_sequence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, threshold=9.5, category_thresholds={"missing": 9.0})
    cfg = load_config(path)
    generate_device_keys(cfg.device.keys_dir)
    c1 = Counters(frames=1500, frames_dropped=7, faces_seen=420, embeddings=96, matches=2, non_match_discarded=94)
    c1.rejections["blurry"] = 30
    c1.rejections["small"] = 12
    dep1 = run_deployment(cfg, watchlist(2, 40), 2, c1)
    c2 = Counters(frames=300, faces_seen=50, embeddings=20, matches=1, non_match_discarded=19)
    run_deployment(cfg, watchlist(3, 55), 1, c2, expire=True)

    assert dep1["frames_processed"] == 1500 and dep1["alerts_raised"] == 2
    assert main(["deployment", "report", "--config", str(path), "--json"]) == 0
    deps = json.loads(capsys.readouterr().out)
    assert len(deps) == 2
    a, b = deps
    assert a["location"] == "Test Street, Cardiff" and a["device_id"] == "van-3"
    assert a["ended"] == "stopped" and a["end"] >= a["start"]
    assert (a["watchlist_version"], a["watchlist_size"]) == (2, 40)
    assert (a["frames_processed"], a["frames_dropped"], a["faces_detected"], a["faces_compared"]) == (1500, 7, 420, 96)
    assert a["faces_rejected_quality"]["blurry"] == 30 and a["faces_rejected_quality"]["small"] == 12
    assert (a["alerts_raised"], a["alert_records"]) == (2, 2)
    assert a["non_match_templates_discarded"] == 94 and a["non_match_templates_retained"] == 0
    assert a["thresholds"]["threshold"] == 9.5 and a["thresholds"]["category_thresholds"] == {"missing": 9.0}
    # The record states what the threshold means for the list in force: expected false alerts.
    assert a["thresholds"]["expected_for_list_size"] == 40
    assert 0.0 <= a["thresholds"]["expected_false_alerts_per_10k_faces"] < 1.0
    assert a["models"]["detector"]["id"] == cfg.models.detector
    assert a["watchlist_events"]["refused"] == 1 and a["below_floor_override"] is None
    assert (b["watchlist_version"], b["watchlist_size"], b["alerts_raised"]) == (3, 55, 1)
    assert b["watchlist_events"]["expired"] == 1 and b["non_match_templates_discarded"] == 19
    # --since drops deployments that ended before it
    assert main(["deployment", "report", "--config", str(path), "--json", "--since", b["start"]]) == 0
    assert [d["watchlist_version"] for d in json.loads(capsys.readouterr().out)] == [3]
    # the text form is what gets published
    assert main(["deployment", "report", "--config", str(path)]) == 0
    text = capsys.readouterr().out
    assert "Test Street, Cardiff" in text and "1500" in text and "94 discarded at once, 0 retained" in text
    # the automatic record is in the (verifiable) log too, ready for <prefix>/audit
    kinds = [r.kind for r in al.iter_records(tmp_path / "data" / "audit")]
    assert kinds.count(al.DEPLOYMENT_RECORD) == 2
    assert main(["audit", "verify", "--config", str(path)]) == 0


def test_a_crashed_run_is_reported_as_unclean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path)
    cfg = load_config(path)
    log = open_audit(cfg, keys=Ed25519PrivateKey.generate())
    audit_config_start(log, cfg)
    audit_alert(log, "alert-1", "S-1")
    del log  # killed: no stop, no counters
    log = open_audit(cfg, keys=Ed25519PrivateKey.generate())
    audit_config_start(log, cfg)
    audit_stop(log)
    assert main(["deployment", "report", "--config", str(path), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)[0]
    assert first["ended"].startswith("unclean") and first["alert_records"] == 1 and first["counters_at"] is None


# ----------------------------------------------------------------------------------- wipe


def wipe_setup(tmp_path: Path, broker_uri: str | None = None) -> tuple[Path, Any]:
    path = write_config(tmp_path)
    doc = yaml.safe_load(path.read_text())
    if broker_uri:
        doc["mqtt"] = {"brokers": [broker_uri]}
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(path)
    generate_device_keys(cfg.device.keys_dir)
    data = cfg.device.data_dir
    data.mkdir(parents=True, exist_ok=True)
    (data / "watchlist.enc").write_bytes(b"\x01" * 64)
    (data / "watchlist.key").write_bytes(b"\x02" * 32)
    (data / "spool.db").write_bytes(b"SQLite format 3\x00")
    log = open_audit(cfg)
    audit_config_start(log, cfg)
    audit_stop(log)
    return path, cfg


def test_wipe_all_publishes_a_final_signed_record_then_removes_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], plain_broker: Any  # noqa: F811
) -> None:
    path, cfg = wipe_setup(tmp_path, plain_broker.uri)
    pub = cfg.device.keys_dir / "device_ed25519.pub.pem"
    pub_pem = pub.read_bytes()
    with Collector(plain_broker, "lfr/van-3/audit") as got:
        assert main(["wipe", "--all", "--config", str(path), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        got.wait_for(3)
    assert out["published"] and out["signed"]
    assert list(cfg.device.data_dir.iterdir()) == [] and list(cfg.device.keys_dir.iterdir()) == []
    final = [json.loads(m.payload) for m in got.messages]
    assert [r["kind"] for r in final] == [al.WATCHLIST_WIPED, al.WIPE_ALL, al.CHECKPOINT]
    final = final[1:]
    # the back office can check the signature with the public key it registered for the device
    (tmp_path / "dev.pub").write_bytes(pub_pem)
    from edge.core.audit.log import verify_signature
    from edge.core.keys import load_ed25519_public

    cp = final[1]["fields"]
    assert cp["covers_hash"] == final[0]["hash"]
    assert verify_signature(load_ed25519_public(tmp_path / "dev.pub"), cp["covers_seq"], cp["covers_hash"],
                            cp["signature"])  # fmt: skip


def test_wipe_all_without_a_broker_keeps_the_final_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.lab.localbroker import free_port

    path, cfg = wipe_setup(tmp_path, f"mqtt://127.0.0.1:{free_port()}")
    assert main(["wipe", "--all", "--config", str(path), "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert "could not be published" in err
    assert [p.name for p in cfg.device.data_dir.iterdir()] == ["final-record.jsonl"]
    assert list(cfg.device.keys_dir.iterdir()) == []
    kept = [json.loads(x) for x in (cfg.device.data_dir / "final-record.jsonl").read_bytes().splitlines()]
    assert [r["kind"] for r in kept] == [al.WATCHLIST_WIPED, al.WIPE_ALL, al.CHECKPOINT]


def test_alert_records_seal_the_subject_to_the_back_office(tmp_path: Path) -> None:
    """Audit records go out in the clear; with alerts.seal_to the subject id inside them is sealed."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from edge.device.audit.service import unseal_alert_fields, unseal_subject

    backoffice = X25519PrivateKey.generate()
    sent: list[bytes] = []
    log = AuditLog(tmp_path / "audit", Ed25519PrivateKey.generate(), fsync=False, publish=sent.append)
    audit_alert(log, "alert-1", "WANTED-0042", score=0.8, category="missing", seal_to=backoffice.public_key())
    audit_alert(log, "alert-2", "WANTED-0043")  # no back-office key configured: clear
    log.close()
    assert b"WANTED-0042" not in b"".join(sent) and b"missing" not in b"".join(sent)
    sealed, clear = (json.loads(x)["fields"] for x in sent[:2])
    assert unseal_subject(backoffice, sealed) == "WANTED-0042"
    assert unseal_alert_fields(backoffice, sealed) == {"subject_id": "WANTED-0042", "category": "missing"}
    assert sealed["score"] == 0.8  # counts and scores stay readable for the deployment record
    assert unseal_subject(backoffice, clear) == "WANTED-0043"
    # the seal is bound to its alert: moved onto another alert id it does not open
    from edge.core.keys import CryptoError

    with pytest.raises(CryptoError):
        unseal_subject(backoffice, {**sealed, "alert_id": "alert-2"})


def test_spool_drops_are_audited_even_when_audit_records_fill_the_spool(tmp_path: Path) -> None:
    """The audit log publishes through the spool, and the spool's drops go to the audit log."""
    import os

    from edge.device.audit.service import spool_drop_hook, spool_publisher
    from edge.device.spool import Spool

    cfg = load_config(write_config(tmp_path))
    log = AuditLog(tmp_path / "audit", Ed25519PrivateKey.generate(), checkpoint_every=EVERY, fsync=False)
    hook = spool_drop_hook(log)
    spool = Spool(tmp_path / "spool.db", os.urandom(32), max_rows=10, on_drop=hook)
    log.publish = spool_publisher(spool.enqueue, cfg)
    try:
        for i in range(25):
            audit_alert(log, f"a{i}", "S-1")
        hook.flush()  # dropped audit records are summarised; the service flushes at stop
        log.close()
        assert spool.pending() == 10
        dropped = spool.dropped_total()
    finally:
        spool.close()
    drops = [r.fields for r in al.iter_records(tmp_path / "audit") if r.kind == al.SPOOL_DROP]
    assert drops and all(d["reason"] == "cap" for d in drops)
    recorded = sum(int(d["count"]) + int(d.get("also_dropped_while_recording", 0)) for d in drops)
    # every drop is on record, except at most those caused by writing the last drop record and the
    # closing checkpoint (the spool's own counters still have them)
    assert dropped - recorded in (0, 1, 2), (dropped, recorded)


def test_watchlist_expiry_writes_the_deployment_record_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store's `expired` event produces a deployment record with the counts so far; stop supersedes it."""
    from edge.device.audit.runtime import ServiceAudit

    path = write_config(tmp_path)
    cfg = load_config(path)
    counters = Counters(frames=100, faces_seen=20, embeddings=8, matches=1, non_match_discarded=5)
    wl = watchlist(4, 12)
    sent: list[bytes] = []
    audit = ServiceAudit(cfg, keys=Ed25519PrivateKey.generate(), counters=lambda: counters, watchlist=lambda: wl)
    audit.log.publish = sent.append
    audit.start(wl)
    audit.alert("alert-1", "S-3", score=0.95)
    audit.watchlist_hook()("expired", {"version": 4, "expires_at": "2026-11-26T12:00:00Z"})
    at_expiry = [json.loads(x) for x in sent if json.loads(x)["kind"] == al.DEPLOYMENT_RECORD]
    assert len(at_expiry) == 1
    rec = at_expiry[0]["fields"]
    assert rec["trigger"] == "watchlist_expired" and rec["frames_processed"] == 100
    assert rec["watchlist_events"]["expired"] == 1 and rec["alerts_raised"] == 1
    counters.frames = 250  # the loop goes on (no list, so nobody can match) until stopped
    dep = audit.stop(counters, None)
    assert dep is not None and dep["frames_processed"] == 250 and dep["watchlist_version"] == 4
    assert main(["deployment", "report", "--config", str(path), "--json"]) == 0
    (only,) = json.loads(capsys.readouterr().out)
    assert only["frames_processed"] == 250 and only["ended"] == "stopped"


def test_privacy_doc_names_only_tests_that_exist() -> None:
    """docs/PRIVACY.md pairs each guarantee with its tests; a renamed test must not leave it stale."""
    import re

    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "PRIVACY.md").read_text()
    table = doc[: doc.index("## 1.")]
    missing, named = [], 0
    for row in table.splitlines():
        current = None
        for m in re.finditer(r"`(tests/[\w/]+\.py)?::(\w+)`", row):
            file, name = m.group(1) or current, m.group(2)
            current = file
            named += 1
            assert file, f"{name}: no test file before it in {row[:60]!r}"
            if not re.search(rf"^def {name}\(", (root / file).read_text(), re.M):
                missing.append(f"{file}::{name}")
    assert named >= 30 and not missing, missing


def test_an_alert_event_is_audited_without_its_crop(tmp_path: Path) -> None:
    from edge.core.types import Match, MatchEvent
    from edge.device.audit.runtime import ServiceAudit

    cfg = load_config(write_config(tmp_path))
    audit = ServiceAudit(cfg, keys=Ed25519PrivateKey.generate())
    crop = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256))
    ev = MatchEvent(Match(Subject("S-7", "missing"), 0.9512, 0.2, 0.93), track_id=12, frame_seq=40,
                    t_wall=1.8e9, camera="cam0", bbox=(1.0, 2.0, 3.0, 4.0), frames_fused=3,
                    watchlist_version=5, crop_jpeg=crop)  # fmt: skip
    audit.alert_event("alert-9", ev)
    audit.stop(None)
    (rec,) = [r for r in al.iter_records(tmp_path / "data" / "audit") if r.kind == al.ALERT]
    assert rec.fields == {"alert_id": "alert-9", "subject_id": "S-7", "category": "missing", "score": 0.9512,
                          "track_id": 12, "watchlist_version": 5}  # fmt: skip
    data = b"".join(p.read_bytes() for p in list_segments(tmp_path / "data" / "audit"))
    assert b"JFIF" not in data and base64.b64encode(crop)[:40] not in data
