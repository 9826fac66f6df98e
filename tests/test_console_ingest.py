"""Console ingest against a real Mosquitto: verified alerts stored, forged ones never, a 1,000-alert burst whole."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy", reason="the console needs the backoffice extra (pip install -e '.[backoffice]')")

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.backoffice.console.config import load_console_config
from edge.backoffice.console.ingest import Ingest
from edge.backoffice.console.server import Parts, open_parts
from edge.backoffice.console.store import AlertFilter
from edge.core.alert_message import build_alert, build_status
from edge.core.audit.log import canonical
from edge.core.keys import generate_device_keys, load_backoffice_keys, load_device_keys
from edge.core.mqtt import LinkSettings, MqttLink
from edge.lab.localbroker import MosquittoBroker
from tests.alertkit import event, face_jpeg, make_backoffice_keys
from tests.broker import broker_factory, plain_broker  # noqa: F401  (fixtures)
from tests.consolekit import make_console_config


def fleet(root: Path, broker: MosquittoBroker, n: int) -> tuple[Path, dict[str, Any]]:
    keys = {}
    for i in range(n):
        d = root / f"van-{i:02d}"
        generate_device_keys(d)
        keys[f"van-{i:02d}"] = load_device_keys(d)
    make_backoffice_keys(root)
    cfg = make_console_config(
        root, broker, {dev: root / dev / "device_ed25519.pub.pem" for dev in keys}, "unused",
        keys_dir=str(root / "bo-keys"),
    )  # fmt: skip
    return cfg, keys


@pytest.fixture
def running(tmp_path: Path, plain_broker: MosquittoBroker) -> Iterator[dict[str, Any]]:  # noqa: F811
    cfg_path, keys = fleet(tmp_path, plain_broker, 10)
    cfg = load_console_config(cfg_path)
    parts = open_parts(cfg)
    ingest = Ingest(cfg, parts.store).start()
    link = MqttLink(LinkSettings(brokers=(plain_broker.uri,), client_id="fleet-sim", max_inflight=100)).start()
    try:
        assert ingest.listener.link.wait_connected(20), ingest.listener.link.stats.last_error
        assert plain_broker.wait_subscribed(cfg.client_id, "lfr/+/audit")
        assert link.wait_connected(10)
        yield {"parts": parts, "ingest": ingest, "link": link, "keys": keys, "root": tmp_path}
    finally:
        link.stop(offline_status=False)
        ingest.stop()
        parts.audit.close()


def test_only_verified_alerts_reach_the_database_with_status_and_deployment_records(running: dict[str, Any]) -> None:
    parts: Parts = running["parts"]
    ingest: Ingest = running["ingest"]
    link: MqttLink = running["link"]
    van = running["keys"]["van-00"]
    seal = load_backoffice_keys(running["root"] / "bo-keys").x25519_public
    forged = build_alert(event(1, face_jpeg()), "van-00", Ed25519PrivateKey.generate(), "d", "e", seal_to=seal)
    good = build_alert(event(2, face_jpeg()), "van-00", van.ed25519, "d", "e", seal_to=seal)
    tampered = bytearray(good.payload)
    tampered[tampered.index(b'"camera":"cam0"') + 11] = ord("X")
    oversize = build_alert(event(3, b"\xff\xd8" + bytes(10 * 1024 * 1024)), "van-00", van.ed25519, "d", "e")
    for payload in (forged.payload, bytes(tampered), oversize.payload, good.payload):
        assert link.publish("lfr/van-00/alerts", payload, qos=1).wait(30)
    status = {"state": "online", "alerts": {"raised": 4, "pending": 2}, "watchlist_version": 7}
    signed_status = build_status(status, "van-00", van.ed25519)  # statuses are signed by the device
    assert link.publish("lfr/van-00/status", signed_status, qos=1, retain=True).wait(10)
    record = {"seq": 9, "time": "2026-01-01T00:00:00Z", "kind": "deployment_record", "prev_hash": "0" * 64,
              "hash": "ab" * 32, "fields": {"device_id": "van-00", "location": "<b>Bridge St</b>", "alerts": 4}}  # fmt: skip
    assert link.publish("lfr/van-00/audit", canonical(record), qos=1).wait(10)
    assert ingest.wait_stored(1, 30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (parts.store.devices() and parts.store.deployments()):
        time.sleep(0.1)
    rows = parts.store.queue(AlertFilter()).rows
    assert [r.alert_id for r in rows] == [good.alert_id]
    reasons = [r.reason for r in ingest.rejections]
    # The 10 MB crop is refused by the listener's size bound before it is parsed.
    assert any("bad signature" in r for r in reasons) and any("byte limit for an alert" in r for r in reasons), reasons
    assert len(list(parts.store.crops.iterdir())) == 1
    dev = parts.store.devices()[0]
    assert (dev.device_id, dev.state, dev.spool_depth, dev.watchlist_version, dev.alerts_raised) == (
        "van-00", "online", 2, 7, 4,
    )  # fmt: skip
    dep = parts.store.deployments()[0]
    assert dep.device_id == "van-00" and json.loads(dep.record_json)["location"] == "<b>Bridge St</b>"


@pytest.mark.slow
def test_a_burst_of_1000_alerts_from_10_devices_is_stored_and_listed_whole(running: dict[str, Any]) -> None:
    parts: Parts = running["parts"]
    ingest: Ingest = running["ingest"]
    link: MqttLink = running["link"]
    seal = load_backoffice_keys(running["root"] / "bo-keys").x25519_public
    crop = face_jpeg()
    sent = []
    for i in range(1000):
        dev = f"van-{i % 10:02d}"
        a = build_alert(event(i, crop), dev, running["keys"][dev].ed25519, "d", "e", seal_to=seal)
        sent.append((a.alert_id, link.publish(f"lfr/{dev}/alerts", a.payload, qos=1)))
    t0 = time.monotonic()
    assert all(h.wait(60) for _, h in sent)
    assert ingest.wait_stored(1000, 120), f"stored {ingest.stored} of 1000"
    rate = 1000 / (time.monotonic() - t0)
    parts.store.page_size = 100
    listed = []
    for page in range(1, 11):
        listed += [r.alert_id for r in parts.store.queue(AlertFilter(), page).rows]
    assert sorted(listed) == sorted(aid for aid, _ in sent)
    assert parts.store.queue(AlertFilter(device_id="van-03")).total == 100
    assert len(list(parts.store.crops.iterdir())) == 1000
    print(f"ingested 1000 alerts at {rate:.0f}/s")
