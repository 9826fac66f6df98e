"""Alerts end to end against a real Mosquitto: TLS, passwords, ACL, signatures, sealing, the spool."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.backoffice.listener import load_backoffice_config
from edge.core.alert_message import AlertRejected, build_alert, verify_alert
from edge.core.config import load_config
from edge.core.errors import EXIT_VERIFY
from edge.core.keys import generate_device_keys, load_backoffice_keys, load_device_keys, load_x25519_public
from edge.core.mqtt import LinkSettings, MqttLink
from edge.core.signing import canonical_json
from edge.device.publisher import AlertPublisher
from edge.device.spool import AckOutcome, Spool
from edge.device.status import CameraStatus, WatchlistState, WatchlistStatus
from tests.alertkit import (
    event,
    face_jpeg,
    lfr_edge,
    make_backoffice,
    make_backoffice_keys,
    make_device,
    secret,
    start_listener,
)
from tests.broker import DEVICE_USERS, BrokerFactory, CertAuthority, MosquittoBroker, broker_factory, tls_broker  # noqa: F401


@pytest.fixture
def setup(tmp_path: Path, tls_broker: MosquittoBroker) -> dict[str, Any]:  # noqa: F811
    bo = make_backoffice_keys(tmp_path)
    seal = bo / "backoffice_x25519.pub.pem"
    a = make_device(tmp_path, tls_broker, "dev-a", DEVICE_USERS["dev-a"], seal_to=seal)
    b = make_device(tmp_path, tls_broker, "dev-b", DEVICE_USERS["dev-b"], seal_to=seal)
    bo_cfg = make_backoffice(
        tmp_path, tls_broker, {"dev-a": a.public_key, "dev-b": b.public_key}, DEVICE_USERS["backoffice"]
    )
    return {"broker": tls_broker, "a": a, "b": b, "bo": bo_cfg, "bo_keys": bo, "tmp": tmp_path}


# --------------------------------------------------------------------------- messages (no broker)


def test_alert_signature_covers_every_byte_and_sealing_hides_the_subject(tmp_path: Path) -> None:
    dev = load_device_keys(make_device_keys(tmp_path))
    bo = load_backoffice_keys(make_backoffice_keys(tmp_path))
    keys = {"dev-a": dev.ed25519_public}
    alert = build_alert(event(1, b"\xff\xd8jpeg"), "dev-a", dev.ed25519, "det", "emb", seal_to=bo.x25519_public)
    wire = json.loads(alert.payload)
    assert {"alert_id", "time", "device_id", "camera", "sealed", "sig"} <= wire.keys()
    assert "body" not in wire and b"S-0001" not in alert.payload and b"jpeg" not in alert.payload
    ok = verify_alert(alert.payload, keys, bo.x25519)
    assert ok.body is not None and ok.body["subject_id"] == "S-0001" and ok.face_jpeg == b"\xff\xd8jpeg"
    assert ok.time.endswith("Z") and ok.body["models"] == {"detector": "det", "embedder": "emb"}
    # Without the back-office key the alert still verifies, but its body stays unreadable.
    assert verify_alert(alert.payload, keys, None).body is None
    # One byte changed anywhere: never accepted.
    for i in range(len(alert.payload)):
        bad = bytearray(alert.payload)
        bad[i] ^= 0x01
        with pytest.raises(AlertRejected):
            verify_alert(bytes(bad), keys, bo.x25519)
    forged = build_alert(event(1), "dev-a", Ed25519PrivateKey.generate(), "det", "emb")
    with pytest.raises(AlertRejected, match="bad signature"):
        verify_alert(forged.payload, keys, bo.x25519)
    with pytest.raises(AlertRejected, match="unknown device"):
        verify_alert(build_alert(event(1), "dev-z", dev.ed25519, "d", "e").payload, keys, None)


def test_canonical_json_follows_rfc8785_number_and_key_rules() -> None:
    doc = {"b": [1.0, 0.5, 1e-7, 0.0001, -2.25, 1e21], "a": "é\n\"", "c": {"z": None, "y": True}}
    assert canonical_json(doc) == '{"a":"é\\n\\"","b":[1,0.5,1e-7,0.0001,-2.25,1e+21],"c":{"y":true,"z":null}}'.encode()


def make_device_keys(tmp: Path) -> Path:
    from edge.core.keys import generate_device_keys

    d = tmp / "devkeys"
    if not d.exists():
        generate_device_keys(d)
    return d


# --------------------------------------------------------------------------- spool (no broker)


def test_spool_encrypts_rows_keeps_order_and_counts_what_the_cap_drops(tmp_path: Path) -> None:
    drops: list[tuple[str, str, int]] = []
    key = bytes(range(32))
    sp = Spool(tmp_path / "spool.db", key, max_rows=10, on_drop=lambda *a: drops.append(a))
    for i in range(13):
        sp.enqueue("lfr/dev-a/alerts", f"secret-subject-{i}".encode(), "alert")
    assert sp.pending() == 10
    assert drops == [("alert", "cap", 1)] * 3
    rows = sp.fetch_after(0, 100)
    assert [r.payload for r in rows] == [f"secret-subject-{i}".encode() for i in range(3, 13)]
    assert rows[0].topic == "lfr/dev-a/alerts"
    sp.delete(rows[0].id)
    sp.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("spool.db*"))
    assert b"secret-subject" not in raw and b"lfr/dev-a" not in raw
    assert sqlite3.connect(tmp_path / "spool.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = Spool(tmp_path / "spool.db", key, max_rows=10, ttl_s=3600)
    assert next(r.payload for r in again.fetch_after(0, 100)) == b"secret-subject-4"
    assert again.counters() == {"dropped.alert.cap": 3}
    assert again.expire(now=time.time() + 7200) == 9 and again.pending() == 0
    assert again.counters()["dropped.alert.ttl"] == 9
    # A row written under another storage key is dropped and counted, not crashed on.
    again.enqueue("t", b"x", "alert")
    again.close()
    other = Spool(tmp_path / "spool.db", bytes(32), max_rows=10)
    assert other.fetch_after(0, 10) == [] and other.counters()["dropped.alert.unreadable"] == 1


def test_spool_keeps_alerts_until_acknowledged_and_a_late_ack_undoes_a_drop(tmp_path: Path) -> None:
    key = bytes(range(32))
    sp = Spool(tmp_path / "spool.db", key, max_rows=10)
    for i in range(12):  # the cap drops alert-0 and alert-1; the back office may have them already
        sp.enqueue("lfr/dev-a/alerts", b"x", "alert", ref=f"alert-{i}")
    assert sp.counters() == {"dropped.alert.cap": 2}
    waiting = sp.awaiting_ack()
    assert (waiting.count, waiting.overdue) == (10, 0) and waiting.oldest_created is not None
    # Only the acknowledgement deletes; a second one for the same id changes nothing.
    assert sp.acknowledge(["alert-5", "alert-5", "unknown"]) == AckOutcome(acknowledged=1, late=0)
    assert sp.acknowledge(["alert-0"]) == AckOutcome(acknowledged=0, late=1)
    assert sp.counters() == {"dropped.alert.cap": 1, "acknowledged.alert": 2, "acknowledged_after_drop.alert": 1}
    assert sp.pending() == 9 and sp.awaiting_ack().count == 9
    # Overdue: flagged once, and the flag survives a restart.
    assert sorted(r for r, _ in sp.mark_overdue(time.time() + 1)) == sorted(
        f"alert-{i}" for i in range(2, 12) if i != 5
    )
    assert sp.mark_overdue(time.time() + 1) == []
    sp.close()
    again = Spool(tmp_path / "spool.db", key, max_rows=10)
    assert again.mark_overdue(time.time() + 1) == [] and again.awaiting_ack().overdue == 9


def test_a_spool_from_before_acknowledgements_is_upgraded_in_place(tmp_path: Path) -> None:
    key = bytes(range(32))
    sp = Spool(tmp_path / "spool.db", key)
    dev = load_device_keys(make_device_keys(tmp_path))
    alert = build_alert(event(1), "dev-a", dev.ed25519, "d", "e")
    sp.enqueue("lfr/dev-a/alerts", alert.payload, "alert")
    sp.close()
    con = sqlite3.connect(tmp_path / "spool.db")  # the old layout: no ref, no overdue column
    con.executescript(
        "CREATE TABLE old AS SELECT id, created, kind, blob FROM spool; DROP TABLE spool;"
        "ALTER TABLE old RENAME TO spool;"
    )
    con.close()
    upgraded = Spool(tmp_path / "spool.db", key)
    assert upgraded.pending() == 1 and upgraded.fetch_after(0, 10)[0].ref == alert.alert_id
    assert upgraded.acknowledge([alert.alert_id]).acknowledged == 1 and upgraded.pending() == 0


# --------------------------------------------------------------------------- against Mosquitto


def test_alerts_arrive_verified_and_unsealed_over_tls_with_face_crop(setup: dict[str, Any]) -> None:
    out = setup["tmp"] / "faces"
    cli = lfr_edge("alerts", "listen", "--config", str(setup["bo"]), "--count", "2", "--timeout", "40",
                   "--out", str(out), "--json")  # fmt: skip
    cfg = load_config(setup["a"].config)
    pub = AlertPublisher.from_config(cfg)
    pub.start()
    crop = face_jpeg()
    try:
        assert setup["broker"].wait_subscribed("bo-listener", "lfr/+/alerts")
        pub.on_match(event(1, crop))
        pub.on_match(event(2))
        assert pub.flush(20), pub.link.stats.last_error
        stdout, stderr = cli.communicate(timeout=40)
    finally:
        pub.stop()
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    alerts = [x for x in lines if x["event"] == "alert"]
    assert [a["subject_id"] for a in alerts] == ["S-0001", "S-0002"]
    first = alerts[0]
    assert first["sealed"] is True and first["device_id"] == "dev-a" and first["score"] == 0.7123
    assert first["bbox"] == [10.0, 20.5, 110.2, 140.0] and first["watchlist_version"] == 7
    saved = Path(first["face_file"])
    assert saved.read_bytes() == crop and (saved.stat().st_mode & 0o077) == 0
    assert alerts[1]["face_file"] is None


def test_device_a_cannot_publish_as_device_b(setup: dict[str, Any]) -> None:
    listener, got = start_listener(setup["bo"], setup["broker"])
    a_keys = load_device_keys(setup["a"].dir / "keys")
    b_keys = load_device_keys(setup["b"].dir / "keys")
    cfg_a = load_config(setup["a"].config)
    link = MqttLink(LinkSettings.from_config(cfg_a)).start()
    try:
        assert link.wait_connected(10), link.stats.last_error
        # A claims to be B, on B's topic, even holding a validly signed alert of B's (a replay).
        as_b = build_alert(event(66), "dev-b", a_keys.ed25519, "d", "e")
        replay = build_alert(event(67), "dev-b", b_keys.ed25519, "d", "e")
        refused = [link.publish("lfr/dev-b/alerts", p, qos=1) for p in (as_b.payload, replay.payload)]
        for h in refused:
            assert h.wait(10) and not h.ok and h.reason_code == 135  # MQTT v5: Not authorized
        # A's own alert after them: per-client ordering means anything earlier would have arrived first.
        mine = build_alert(event(68), "dev-a", a_keys.ed25519, "d", "e")
        assert link.publish("lfr/dev-a/alerts", mine.payload, qos=1).wait(10)
        assert got.wait(lambda: len(got.alerts) >= 1)
        time.sleep(0.5)
    finally:
        link.stop(offline_status=False)
        listener.stop()
    assert [(a.device_id, a.body["subject_id"] if a.body else None) for a in got.alerts] == [("dev-a", "S-0068")]
    assert got.rejects == []


def test_listen_that_received_only_forgeries_exits_3(
    setup: dict[str, Any], broker_factory: BrokerFactory  # noqa: F811
) -> None:
    """--count not reached because what arrived did not verify: verification failed, not a quiet broker."""
    bo = make_backoffice(setup["tmp"] / "bo-forged", setup["broker"], {"dev-a": setup["a"].public_key},
                         DEVICE_USERS["backoffice"], unseal=False)  # fmt: skip
    cli = lfr_edge("alerts", "listen", "--config", str(bo), "--count", "1", "--timeout", "8")
    seal = load_x25519_public(setup["bo_keys"] / "backoffice_x25519.pub.pem")
    forged = build_alert(event(1), "dev-a", Ed25519PrivateKey.generate(), "d", "e", seal_to=seal)
    link = MqttLink(LinkSettings.from_config(load_config(setup["a"].config))).start()
    try:
        assert setup["broker"].wait_subscribed("bo-listener", "lfr/+/alerts")
        assert link.wait_connected(10)
        assert link.publish("lfr/dev-a/alerts", forged.payload).wait(10)
        stdout, stderr = cli.communicate(timeout=40)
    finally:
        link.stop(offline_status=False)
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == EXIT_VERIFY, stderr
    assert "REJECTED lfr/dev-a/alerts" in stdout and "1 message(s) rejected" in stderr


def test_forged_tampered_and_unknown_device_alerts_are_rejected_never_shown(
    setup: dict[str, Any], broker_factory: BrokerFactory  # noqa: F811
) -> None:
    # The back office knows dev-a only: dev-b's genuine alerts come from an unknown device.
    bo_only_a = make_backoffice(setup["tmp"] / "bo2", setup["broker"], {"dev-a": setup["a"].public_key},
                                DEVICE_USERS["backoffice"], unseal=False)  # fmt: skip
    cli = lfr_edge("alerts", "listen", "--config", str(bo_only_a), "--count", "1", "--timeout", "40")
    a_keys = load_device_keys(setup["a"].dir / "keys")
    b_keys = load_device_keys(setup["b"].dir / "keys")
    seal = load_x25519_public(setup["bo_keys"] / "backoffice_x25519.pub.pem")
    forged = build_alert(event(1), "dev-a", Ed25519PrivateKey.generate(), "d", "e", seal_to=seal)
    genuine = build_alert(event(2), "dev-a", a_keys.ed25519, "d", "e", seal_to=seal)
    tampered = bytearray(genuine.payload)
    pos = genuine.payload.index(b'"data":"') + 20
    tampered[pos] = ord("A") if tampered[pos] != ord("A") else ord("B")
    unknown = build_alert(event(3), "dev-b", b_keys.ed25519, "d", "e")
    last = build_alert(event(4), "dev-a", a_keys.ed25519, "d", "e", seal_to=seal)
    links = {d: MqttLink(LinkSettings.from_config(load_config(setup[d].config))).start() for d in ("a", "b")}
    try:
        assert setup["broker"].wait_subscribed("bo-listener", "lfr/+/alerts")
        for link in links.values():
            assert link.wait_connected(10)
        assert links["a"].publish("lfr/dev-a/alerts", forged.payload).wait(10)
        assert links["a"].publish("lfr/dev-a/alerts", bytes(tampered)).wait(10)
        assert links["b"].publish("lfr/dev-b/alerts", unknown.payload).wait(10)
        # Mosquitto queues a message to subscribers before it PUBACKs it, so `last` comes after.
        assert links["a"].publish("lfr/dev-a/alerts", last.payload).wait(10)
        stdout, stderr = cli.communicate(timeout=40)
    finally:
        for link in links.values():
            link.stop(offline_status=False)
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, stderr
    lines = stdout.splitlines()
    alerts = [x for x in lines if x.startswith("ALERT")]
    rejected = [x for x in lines if x.startswith("REJECTED")]
    assert len(alerts) == 1 and last.alert_id in alerts[0] and "subject=<sealed" in alerts[0]
    assert len(rejected) == 3, lines
    assert "bad signature" in rejected[0] and "bad signature" in rejected[1]
    assert "unknown device 'dev-b'" in rejected[2]
    for bad in (forged, genuine, unknown):
        assert bad.alert_id not in "\n".join(alerts)


def test_wrong_password_and_untrusted_ca_give_one_clear_line_and_keep_retrying(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    broker = setup["broker"]
    wrong_pw = make_device(tmp_path / "w", broker, "dev-a", "not-the-password")
    other_ca = CertAuthority.create(tmp_path / "otherca", cn="Some other CA")
    untrusted = make_device(tmp_path / "u", broker, "dev-b", DEVICE_USERS["dev-b"], ca_file=other_ca.cert_file)
    procs = [lfr_edge("alerts", "test", "--config", str(d.config), "--count", "2", "--wait", "4")
             for d in (wrong_pw, untrusted)]  # fmt: skip
    results = [p.communicate(timeout=40) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 1, err  # undelivered after --wait: exit 1, no crash
        assert "Traceback" not in err
    pw_err, ca_err = results[0][1].splitlines(), results[1][1].splitlines()
    login = [line for line in pw_err if "refused the login for user 'dev-a'" in line]
    assert len(login) == 1 and "password" in login[0].lower() and "retrying" in login[0], pw_err
    trust = [line for line in ca_err if "not trusted by mqtt.tls.ca_file" in line]
    assert len(trust) == 1 and "retrying" in trust[0], ca_err
    assert "2 message(s) still in the spool" in results[0][1]
    log = broker.log_text()
    # Retried (with backoff) rather than giving up after the first refusal.
    assert log.count("disconnected, not authorised") >= 2
    assert log.count("unknown ca") >= 2


def test_status_is_retained_online_and_the_will_says_offline_when_the_device_dies(setup: dict[str, Any]) -> None:
    listener, got = start_listener(setup["bo"], setup["broker"])
    dev = lfr_edge("alerts", "test", "--config", str(setup["a"].config), "--count", "1", "--interval", "30",
                   "--wait", "1")  # fmt: skip
    try:
        assert got.wait(lambda: any(s.get("state") == "online" for _, s in got.statuses), 30)
        online = next(s for d, s in got.statuses if s.get("state") == "online")
        assert online["device_id"] == "dev-a" and "pending" in online["alerts"] and "uptime_s" in online
        assert "cpu_temp_c" in online and online["models"]["embedder"]
        dev.kill()
        dev.wait(10)
        # The Will is the device's signed offline status, verified like any status.
        assert got.wait(lambda: got.statuses[-1][1]["state"] == "offline", 30)
        assert got.statuses[-1][1]["device_id"] == "dev-a" and not got.rejects
    finally:
        if dev.poll() is None:
            dev.kill()
        listener.stop()
    assert got.statuses[-1][0] == "dev-a"


def test_backoffice_config_rejects_unknown_keys_naming_them(tmp_path: Path) -> None:
    from edge.core.errors import ConfigError

    p = tmp_path / "bo.yaml"
    p.write_text("brokers: ['mqtts://h:8883']\ndevices: {x: {public_key: k.pem}}\nunseal_kye: a\n")
    with pytest.raises(ConfigError, match="unseal_kye: unknown key"):
        load_backoffice_config(p)
    p.write_text("brokers: ['http://h']\n")
    with pytest.raises(ConfigError, match="not a broker URI"):
        load_backoffice_config(p)
    # The acknowledgement key is checked with the rest, before anything connects.
    p.write_text("brokers: ['mqtts://h:8883']\nack_key: missing/backoffice_ed25519.pem\n")
    with pytest.raises(ConfigError, match=r"ack_key: 'missing/backoffice_ed25519\.pem' does not exist"):
        load_backoffice_config(p)


def test_protocol_auto_falls_back_to_mqtt311_when_the_broker_refuses_v5(
    broker_factory: BrokerFactory,  # noqa: F811
) -> None:
    from tests.v3proxy import V311OnlyProxy

    broker = broker_factory(tls=False, users=None)
    proxy = V311OnlyProxy(broker.port)
    link = MqttLink(LinkSettings(brokers=(f"mqtt://127.0.0.1:{proxy.port}",), client_id="old-broker",
                                 reconnect_min_s=0.1)).start()  # fmt: skip
    try:
        assert link.wait_connected(10), link.stats.last_error
        assert link.publish("lfr/dev-a/alerts", b"x", qos=1).wait(10)
    finally:
        link.stop(offline_status=False)
        proxy.close()
    assert proxy.levels[:2] == [5, 4] and link.stats.protocol == "v3.1.1"


def _check_schema(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str = "$") -> None:
    """The subset of JSON Schema docs/alert.schema.json uses (no validator library on the device)."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    if "const" in schema:
        assert value == schema["const"], where
    kind = schema.get("type")
    types = {"object": dict, "string": str, "integer": int, "number": (int, float), "array": list}
    if kind:
        assert isinstance(value, types[kind]), f"{where}: {type(value).__name__} is not {kind}"
    if "pattern" in schema:
        import re

        assert re.search(schema["pattern"], value), f"{where}: {value!r} !~ {schema['pattern']}"
    if kind == "object":
        props = schema.get("properties", {})
        assert set(schema.get("required", [])) <= value.keys(), f"{where}: missing required"
        if schema.get("additionalProperties") is False:
            assert value.keys() <= props.keys(), f"{where}: extra {set(value) - set(props)}"
        for k, v in value.items():
            _check_schema(v, props[k], root, f"{where}.{k}")
    if kind == "array":
        assert schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 10**9), where
        for i, v in enumerate(value):
            _check_schema(v, schema["items"], root, f"{where}[{i}]")


def test_messages_match_the_published_json_schema_and_example_config_loads(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    schema = json.loads((root / "docs" / "alert.schema.json").read_text())
    dev = load_device_keys(make_device_keys(tmp_path))
    bo = load_backoffice_keys(make_backoffice_keys(tmp_path))
    clear = build_alert(event(1, face_jpeg()), "dev-a", dev.ed25519, "det", "emb")
    sealed = build_alert(event(2), "dev-a", dev.ed25519, "det", "emb", seal_to=bo.x25519_public)
    for alert in (clear, sealed):
        msg = json.loads(alert.payload)
        _check_schema(msg, schema, schema)
        assert ("body" in msg) != ("sealed" in msg)
    body = verify_alert(sealed.payload, {"dev-a": dev.ed25519_public}, bo.x25519).body
    _check_schema(body, schema["$defs"]["body"], schema, "$.sealed(body)")
    # The example loads once the files it names exist (the loader checks them, as check-config does).
    bo_dir = tmp_path / "bo-example"
    example = bo_dir / "backoffice.yaml"
    bo_dir.mkdir()
    example.write_bytes((root / "config" / "backoffice.example.yaml").read_bytes())
    secret(bo_dir / "secrets" / "backoffice.pw", "pw\n")
    (bo_dir / "pki").mkdir()
    (bo_dir / "pki" / "ca.crt").write_text("placeholder: presence is what the loader checks\n")
    make_backoffice_keys(bo_dir)
    (bo_dir / "bo-keys").rename(bo_dir / "keys")
    for van in ("van-1", "van-2"):
        generate_device_keys(bo_dir / "devices" / van)
    cfg = load_backoffice_config(example)
    assert cfg.devices["van-1"].public_key.is_absolute() and cfg.brokers


def test_client_certificate_is_presented_when_the_broker_requires_one(
    tmp_path: Path, broker_factory: BrokerFactory  # noqa: F811
) -> None:
    broker = broker_factory(tls=True, users=DEVICE_USERS, require_client_cert=True)
    cert, key = broker.client_cert("dev-a")
    with_cert = make_device(tmp_path / "c", broker, "dev-a", DEVICE_USERS["dev-a"],
                            tls={"ca_file": str(broker.ca_file), "cert_file": str(cert), "key_file": str(key)})  # fmt: skip
    without = make_device(tmp_path / "n", broker, "dev-a", DEVICE_USERS["dev-a"])
    links = [MqttLink(LinkSettings.from_config(load_config(d.config))) for d in (with_cert, without)]
    for link in links:
        link.start()
    try:
        assert links[0].wait_connected(10), links[0].stats.last_error
        assert links[0].publish("lfr/dev-a/alerts", b"x").wait(10)
        deadline = time.monotonic() + 15
        while "client certificate" not in links[1].stats.last_error and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not links[1].connected
        assert "client certificate" in links[1].stats.last_error, links[1].stats.last_error
    finally:
        for link in links:
            link.stop(offline_status=False)


def test_a_resent_alert_is_shown_once_even_across_listener_restarts(setup: dict[str, Any]) -> None:
    bo = make_backoffice(setup["tmp"] / "bo3", setup["broker"], {"dev-a": setup["a"].public_key},
                         DEVICE_USERS["backoffice"], state_dir=str(setup["tmp"] / "bo3" / "state"))  # fmt: skip
    keys = load_device_keys(setup["a"].dir / "keys")
    first = build_alert(event(1), "dev-a", keys.ed25519, "d", "e")
    second = build_alert(event(2), "dev-a", keys.ed25519, "d", "e")
    sentinel = build_alert(event(3), "dev-a", keys.ed25519, "d", "e")
    link = MqttLink(LinkSettings.from_config(load_config(setup["a"].config))).start()
    try:
        assert link.wait_connected(10)
        listener, got = start_listener(bo, setup["broker"])
        try:
            assert link.publish("lfr/dev-a/alerts", first.payload).wait(10)
            assert link.publish("lfr/dev-a/alerts", first.payload).wait(10)  # at-least-once duplicate
            assert link.publish("lfr/dev-a/alerts", sentinel.payload).wait(10)
            assert got.wait(lambda: len(got.alerts) >= 2)
        finally:
            listener.stop()
        # The device restarts and re-sends what it never saw acknowledged, then raises a new alert.
        listener, got2 = start_listener(bo, setup["broker"])
        try:
            assert link.publish("lfr/dev-a/alerts", first.payload).wait(10)
            assert link.publish("lfr/dev-a/alerts", second.payload).wait(10)
            assert got2.wait(lambda: len(got2.alerts) >= 1)
        finally:
            listener.stop()
    finally:
        link.stop(offline_status=False)
    assert [a.alert_id for a in got.alerts] == [first.alert_id, sentinel.alert_id]
    assert [a.alert_id for a in got2.alerts] == [second.alert_id]


def test_status_lays_out_typed_parts_and_reads_cpu_temperature(tmp_path: Path) -> None:
    from edge.core.config import parse_config
    from edge.device.status import cpu_temperature_c

    for i, (kind, milli) in enumerate((("acpitz", "30000"), ("cpu-thermal", "61250"))):
        zone = tmp_path / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    assert cpu_temperature_c(tmp_path / "thermal") in (61.2, 61.3)  # the CPU zone, not the first one
    assert cpu_temperature_c(tmp_path / "nothing") is None
    cfg = parse_config({"device": {"id": "dev-s", "data_dir": str(tmp_path / "d")},
                        "mqtt": {"brokers": ["mqtt://127.0.0.1:1"]}}, tmp_path)  # fmt: skip
    keys = load_device_keys(make_device_keys(tmp_path))
    spool = Spool(tmp_path / "d" / "spool.db", bytes(32))
    pub = AlertPublisher(cfg, MqttLink.from_config(cfg), spool, keys.ed25519)
    pub.on_match(event(1))  # not started: stays in the spool
    camera = CameraStatus("cam0", 12.5, 40, 0, 0, 40, 9, {"blur": 2}, 1, 0, 3, 1)
    # The document is laid out from the typed parts, each once: the camera's count of matches stays
    # its own, the delivery block is the publisher's (nothing is settled by a merge).
    pub.status_provider = lambda: dataclasses.replace(
        pub.own_status(), cameras=(camera,), watchlist=WatchlistStatus(WatchlistState.NONE)
    )
    status = pub.status().to_json()
    assert status["state"] == "online" and status["fps"] == 12.5 and status["faces_seen"] == 40
    alerts = status["alerts"]
    assert (alerts["raised"], alerts["pending"], alerts["dropped"], alerts["delivered"]) == (1, 1, {}, 0)
    assert alerts["awaiting_ack"] == 1 and alerts["refused_by_broker"] == 0  # the acknowledgement figures, once
    assert status["cameras"][0]["matches"] == 1 and status["rejections"] == {"blur": 2}
    assert status["watchlist"] == "none installed" and status["watchlist_detail"] == {"state": "none"}
    assert status["models"] == {"detector": cfg.models.detector, "embedder": cfg.models.embedder}
    assert status["runtime"]["tflite"] in ("ai-edge-litert", "tflite-runtime", "unavailable")
    assert b"S-0001" not in json.dumps(status).encode()  # counts only, never who
    spool.close()


def test_fails_over_to_the_next_broker_and_resends_what_was_not_acknowledged(
    broker_factory: BrokerFactory,  # noqa: F811
) -> None:
    from edge.lab.localbroker import free_port

    first, second = broker_factory(tls=False), broker_factory(tls=False)
    dead = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens here
    link = MqttLink(LinkSettings(brokers=(dead, first.uri, second.uri), client_id="failover",
                                 reconnect_min_s=0.1, reconnect_max_s=0.5)).start()  # fmt: skip
    try:
        assert link.wait_connected(10), link.stats.last_error
        assert link.stats.broker == first.uri and "refused the TCP connection" in link.stats.errors[0]
        first.kill()
        handle = link.publish("lfr/dev-a/alerts", b"after the failover", qos=1)
        assert handle.wait(15) and handle.ok
        assert link.stats.broker == second.uri
    finally:
        link.stop(offline_status=False)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_FIELDS = {"v": 1, "type": "alert", "alert_id": "a", "time": "t", "device_id": "dev-a", "camera": "c"}


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200), extra=st.dictionaries(st.sampled_from(
    ["sig", "body", "sealed", "v", "device_id", "alert_id"]), _json, max_size=3))  # fmt: skip
def test_hostile_messages_are_rejected_never_crash_the_listener(raw: bytes, extra: dict[str, Any]) -> None:
    keys = {"dev-a": _FUZZ_KEY.public_key()}
    for payload in (raw, json.dumps({**_FIELDS, **extra}).encode()):
        with pytest.raises(AlertRejected):
            verify_alert(payload, keys, None, "dev-a")


_FUZZ_KEY = Ed25519PrivateKey.generate()
