"""A back-office-side subscriber for tests: everything a broker delivered on a topic filter, in order."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class Got:
    topic: str
    payload: bytes
    retain: bool


class Collector:
    """Subscribes (QoS 1) before the code under test runs, so nothing it sends can be missed."""

    def __init__(self, broker: Any, topic_filter: str = "#") -> None:
        self.broker = broker
        self.topic_filter = topic_filter
        self.messages: list[Got] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{id(self)}")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        client.subscribe(self.topic_filter, qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append(Got(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def __enter__(self) -> Collector:
        self._client.connect(self.broker.host, self.broker.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("collector could not subscribe")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_for(self, n: int, timeout: float = 10.0, topic_suffix: str = "") -> list[Got]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.on(topic_suffix)
            if len(got) >= n:
                return got
            time.sleep(0.02)
        return self.on(topic_suffix)

    def on(self, topic_suffix: str = "") -> list[Got]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(topic_suffix)]
