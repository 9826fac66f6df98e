"""AlertPublisher: the pipeline's match sink and the device's status heartbeat.

`on_match` signs (and seals) the alert and writes it to the spool; it never waits for the network.
A drainer thread hands spooled rows to the MQTT link in order, a bounded window at a time, and
deletes each row only when its PUBACK arrives. After a restart everything still in the spool is sent
again (the receiver dedupes by alert_id). A heartbeat thread publishes the retained online status on
every connect and every mqtt.status_interval_s.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from edge.core.alert_message import build_alert, build_status
from edge.core.config import Config
from edge.core.keys import DeviceKeys, load_device_keys, load_x25519_public, storage_key
from edge.core.mqtt import LinkSettings, MqttLink, PublishHandle
from edge.core.timefmt import format_utc
from edge.core.types import MatchEvent
from edge.device.spool import DropCallback, Spool

log = logging.getLogger("lfr_edge.alerts")

StatusProvider = Callable[[], dict[str, Any]]
SPOOL_FILE = "spool.db"
STORAGE_KEY = "storage.key"
_EXPIRE_EVERY_S = 60.0
_MAX_TRACKED = 100_000


def cpu_temperature_c(root: Path = Path("/sys/class/thermal")) -> float | None:
    """The CPU zone's temperature (Pi: cpu-thermal, Jetson: CPU-therm), else the first readable zone."""
    zones = sorted(root.glob("thermal_zone*"))
    readings: list[tuple[bool, float]] = []
    for z in zones:
        try:
            milli = int((z / "temp").read_text().strip())
            kind = (z / "type").read_text().strip().lower()
        except (OSError, ValueError):
            continue
        readings.append(("cpu" in kind or "soc" in kind, milli / 1000.0))
    if not readings:
        return None
    preferred = [t for is_cpu, t in readings if is_cpu]
    return round((preferred or [readings[0][1]])[0], 1)


class AlertPublisher:
    def __init__(
        self,
        cfg: Config,
        link: MqttLink,
        spool: Spool,
        signer: Ed25519PrivateKey,
        seal_to: X25519PublicKey | None = None,
        status_provider: StatusProvider | None = None,
        window: int = 100,
    ) -> None:
        self.cfg = cfg
        self.link = link
        self.spool = spool
        self.signer = signer
        self.seal_to = seal_to
        self.status_provider = status_provider
        self.window = window
        self.prefix = cfg.topic_prefix
        self.alerts_topic = f"{self.prefix}/alerts"
        self.status_topic = f"{self.prefix}/status"
        self.audit_topic = f"{self.prefix}/audit"
        self.raised = 0
        self.delivered = 0
        self.latencies_s: deque[float] = deque(maxlen=100_000)  # match → PUBACK, for the benchmark
        self._t_enqueued: dict[int, float] = {}
        self._t_lock = threading.Lock()
        self._events: queue.SimpleQueue[tuple[int, PublishHandle, float] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._status_now = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = time.monotonic()
        self._runtime_info: dict[str, str] | None = None
        link.on_connect(self._status_now.set)

    @staticmethod
    def from_config(
        cfg: Config,
        status_provider: StatusProvider | None = None,
        on_drop: DropCallback | None = None,
        link: MqttLink | None = None,
        keys: DeviceKeys | None = None,
    ) -> AlertPublisher:
        """Device keys from device.keys_dir (unless given), spool in device.data_dir, seal_to from alerts.seal_to."""
        keys = keys if keys is not None else load_device_keys(cfg.device.keys_dir)
        spool = Spool(
            cfg.device.data_dir / SPOOL_FILE,
            storage_key(cfg.device.keys_dir, STORAGE_KEY),
            max_rows=cfg.alerts.spool.max_rows,
            ttl_s=cfg.alerts.spool.ttl_s,
            on_drop=on_drop,
        )
        seal_to = load_x25519_public(cfg.alerts.seal_to) if cfg.alerts.seal_to else None
        if link is None:
            # The Last Will is signed too: the back office shows no status it cannot verify.
            offline = build_status({"state": "offline"}, cfg.device.id, keys.ed25519)
            link = MqttLink(dataclasses.replace(LinkSettings.from_config(cfg), will_payload=offline))
        return AlertPublisher(cfg, link, spool, keys.ed25519, seal_to, status_provider)

    # ----------------------------------------------------------------------- sinks

    def on_match(self, event: MatchEvent) -> str:
        """Pipeline sink: durable on return; publishing happens on the drainer thread.

        Returns the alert id so the audit log can record which alert was raised for whom."""
        t = time.monotonic()
        alert = build_alert(
            event,
            self.cfg.device.id,
            self.signer,
            detector=self.cfg.models.detector,
            embedder=self.cfg.models.embedder,
            seal_to=self.seal_to,
            include_crop=self.cfg.alerts.include_crop,
        )
        row = self.spool.enqueue(self.alerts_topic, alert.payload, "alert")
        with self._t_lock:
            self._t_enqueued[row] = t
            while len(self._t_enqueued) > _MAX_TRACKED:  # rows the cap dropped are never acknowledged
                self._t_enqueued.pop(next(iter(self._t_enqueued)))
        self.raised += 1
        self._events.put(None)
        return alert.alert_id

    def enqueue(self, topic: str, payload: bytes, kind: str) -> int:
        """Any other record that must not be lost (audit: kind "audit", topic <prefix>/audit)."""
        row = self.spool.enqueue(topic, payload, kind)
        self._events.put(None)
        return row

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> AlertPublisher:
        self._stop.clear()
        self.link.start()
        for target, name in ((self._drain, "alerts-drain"), (self._heartbeat, "alerts-status")):
            th = threading.Thread(target=target, name=name, daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def flush(self, timeout: float) -> bool:
        """Wait until the spool is empty (everything acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.spool.pending() > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._events.put(None)
        self._status_now.set()
        for th in self._threads:
            th.join(timeout)
        self._threads.clear()
        self.link.stop(timeout)
        self.spool.close()

    # ----------------------------------------------------------------------- drainer

    def _drain(self) -> None:
        inflight: dict[int, PublishHandle] = {}
        cursor = [0, time.monotonic()]  # last row handed to the link, next TTL sweep
        while not self._stop.is_set():
            try:
                self._drain_step(inflight, cursor)
            except Exception:  # e.g. disk full: keep the alerts in the spool and try again
                log.exception("alerts: spool drainer failed; retrying in 1 s")
                self._stop.wait(1.0)

    def _drain_step(self, inflight: dict[int, PublishHandle], cursor: list[float]) -> None:
        try:
            item = self._events.get(timeout=0.5)
        except queue.Empty:
            item = None
        acked: list[int] = []
        while True:
            if item is not None:
                self._acknowledged(*item, inflight, acked)
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                break
        self.spool.delete_many(acked)
        if time.monotonic() >= cursor[1]:
            self.spool.expire()
            cursor[1] = time.monotonic() + _EXPIRE_EVERY_S
        room = self.window - len(inflight)
        if room <= 0:
            return
        for row in self.spool.fetch_after(int(cursor[0]), room):
            handle = self.link.publish(row.topic, row.payload, qos=1)
            inflight[row.id] = handle
            cursor[0] = row.id
            handle.add_done_callback(self._on_ack(row.id))

    def _on_ack(self, row_id: int) -> Callable[[PublishHandle], None]:
        # Runs on paho's thread: only queue the event, the drainer does the SQLite work.
        def done(handle: PublishHandle) -> None:
            self._events.put((row_id, handle, time.monotonic()))

        return done

    def _acknowledged(
        self,
        row_id: int,
        handle: PublishHandle,
        t_ack: float,
        inflight: dict[int, PublishHandle],
        acked: list[int],
    ) -> None:
        inflight.pop(row_id, None)
        with self._t_lock:
            t0 = self._t_enqueued.pop(row_id, None)
        if handle.ok:
            acked.append(row_id)
            self.delivered += 1
            if t0 is not None:
                self.latencies_s.append(t_ack - t0)
        else:
            # The broker will never take it (e.g. ACL): keeping it would block the spool forever.
            log.error("alerts: broker refused %s (%s); dropping it", handle.topic, handle.reason)
            self.spool.drop(row_id, "refused")

    # ----------------------------------------------------------------------- status

    def _runtime(self) -> dict[str, str]:
        if self._runtime_info is None:
            from edge import __version__
            from edge.core.errors import InputError
            from edge.core.inference import runtime_name

            try:
                tflite = runtime_name()
            except InputError:
                tflite = "unavailable"
            self._runtime_info = {"tflite": tflite, "python": platform.python_version(), "lfr_edge": __version__}
        return self._runtime_info

    def status(self) -> dict[str, Any]:
        counters = self.spool.counters()
        out: dict[str, Any] = {
            "state": "online",
            "device_id": self.cfg.device.id,
            "time": format_utc(time.time()),
            "uptime_s": round(time.monotonic() - self._started, 1),
            "alerts": {
                "raised": self.raised,
                "delivered": self.delivered,
                "pending": self.spool.pending(),
                "dropped": {k.removeprefix("dropped."): v for k, v in counters.items() if k.startswith("dropped.")},
            },
            "mqtt": {
                "broker": self.link.stats.broker,
                "protocol": self.link.stats.protocol,
                "reconnects": max(0, self.link.stats.connects - 1),
            },
            "models": {"detector": self.cfg.models.detector, "embedder": self.cfg.models.embedder},
            "cpu_temp_c": cpu_temperature_c(),
            "runtime": self._runtime(),
        }
        if self.status_provider is None:
            return out
        try:
            merged = dict(self.status_provider())
        except Exception:
            log.exception("alerts: status provider failed")
            return out
        # The pipeline's figures first; on a clash the publisher's own (it knows delivery) win.
        for k, v in out.items():
            prev = merged.get(k)
            merged[k] = {**prev, **v} if isinstance(prev, dict) and isinstance(v, dict) else v
        return merged

    def _heartbeat(self) -> None:
        interval = self.cfg.mqtt.status_interval_s
        while not self._stop.is_set():
            self._status_now.wait(interval)
            self._status_now.clear()
            if self._stop.is_set():
                break
            if self.link.connected:
                payload = build_status(self.status(), self.cfg.device.id, self.signer)
                self.link.publish(self.status_topic, payload, qos=1, retain=True)
