"""End-to-end acknowledgement by the review console (issue 11): an alert is acknowledged to its device
only once its row is committed; a storage failure acknowledges nothing; a re-sent alert is stored once
and acknowledged again. Real Mosquitto, real SQLite database, the console's own ingest."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy", reason="the console needs the backoffice extra (pip install -e '.[backoffice]')")

from edge.backoffice.console.config import load_console_config
from edge.backoffice.console.ingest import Ingest
from edge.backoffice.console.server import open_parts
from edge.backoffice.console.store import AlertFilter
from edge.core.alert_ack import AckRejected, open_ack
from edge.core.alert_message import build_alert
from edge.core.keys import generate_device_keys, load_backoffice_keys, load_device_keys
from edge.core.mqtt import LinkSettings, Message, MqttLink
from edge.lab.localbroker import MosquittoBroker
from tests.alertkit import event, face_jpeg, make_backoffice_keys
from tests.broker import broker_factory, plain_broker  # noqa: F401  (fixtures)
from tests.consolekit import make_console_config


class Acks:
    def __init__(self, trusted: Any) -> None:
        self.trusted = trusted
        self.ids: list[str] = []
        self.cond = threading.Condition()

    def on_message(self, m: Message) -> None:
        try:
            ack = open_ack(m.payload, [self.trusted], "van-00")
        except AckRejected:
            return
        with self.cond:
            self.ids += ack.alert_ids
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 30.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.ids) >= n, timeout)


@pytest.fixture
def console(tmp_path: Path, plain_broker: MosquittoBroker) -> Iterator[dict[str, Any]]:  # noqa: F811
    d = tmp_path / "van-00"
    generate_device_keys(d)
    bo = make_backoffice_keys(tmp_path)
    cfg_path = make_console_config(
        tmp_path, plain_broker, {"van-00": d / "device_ed25519.pub.pem"}, "unused", keys_dir=str(bo)
    )
    cfg = load_console_config(cfg_path)
    parts = open_parts(cfg)
    ingest = Ingest(cfg, parts.store).start()
    bo_keys = load_backoffice_keys(bo)
    acks = Acks(bo_keys.ed25519_public)
    link = MqttLink(LinkSettings(brokers=(plain_broker.uri,), client_id="van-00-sim")).start()
    link.subscribe("lfr/van-00/ack", acks.on_message)
    try:
        assert ingest.listener.link.wait_connected(20) and link.wait_connected(10)
        assert plain_broker.wait_subscribed(cfg.client_id, "lfr/+/alerts")
        assert plain_broker.wait_subscribed("van-00-sim", "lfr/van-00/ack")
        yield {"parts": parts, "ingest": ingest, "link": link, "acks": acks,
               "device": load_device_keys(d), "seal": bo_keys.x25519_public}  # fmt: skip
    finally:
        link.stop(offline_status=False)
        ingest.stop()
        parts.audit.close()


def test_console_acknowledges_a_committed_alert_and_a_resent_one_again_storing_it_once(
    console: dict[str, Any],
) -> None:
    alert = build_alert(event(1, face_jpeg()), "van-00", console["device"].ed25519, "d", "e", seal_to=console["seal"])
    for _ in range(2):  # the first acknowledgement was lost; the device sends the alert again
        assert console["link"].publish("lfr/van-00/alerts", alert.payload, qos=1).wait(10)
    assert console["acks"].wait(2), console["acks"].ids
    assert console["acks"].ids == [alert.alert_id, alert.alert_id]
    rows = console["parts"].store.queue(AlertFilter()).rows
    assert [r.alert_id for r in rows] == [alert.alert_id]


def test_console_that_cannot_store_acknowledges_nothing_and_stores_the_resend(console: dict[str, Any]) -> None:
    store = console["parts"].store
    crops: Path = store.crops
    shutil.rmtree(crops)
    crops.write_text("a file where the crops directory should be\n")  # storage fails, for root too
    alert = build_alert(event(2, face_jpeg()), "van-00", console["device"].ed25519, "d", "e", seal_to=console["seal"])
    ingest: Ingest = console["ingest"]
    assert console["link"].publish("lfr/van-00/alerts", alert.payload, qos=1).wait(10)
    deadline = time.monotonic() + 30
    while ingest.refused < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r.reason for r in ingest.rejections] == ["not stored (storage error)"]
    assert store.queue(AlertFilter()).total == 0 and ingest.listener.failed == 1
    crops.unlink()
    crops.mkdir(mode=0o700)  # storage back: the device's re-send is stored and acknowledged
    assert console["link"].publish("lfr/van-00/alerts", alert.payload, qos=1).wait(10)
    assert console["acks"].wait(1), "no acknowledgement after the store recovered"
    assert console["acks"].ids == [alert.alert_id]
    assert [r.alert_id for r in store.queue(AlertFilter()).rows] == [alert.alert_id]
