"""AlertPublisher: the pipeline's match sink and the device's status heartbeat.

`on_match` signs (and seals) the alert and writes it to the spool; it never waits for the network.
A drainer thread hands spooled rows to the MQTT link in order, a bounded window at a time. The
broker's PUBACK only means "the broker has it" (audit records are deleted then); an alert leaves the
spool only when the back office acknowledges it end to end on `<prefix>/ack`, signed with a key in
watchlist.trusted_signers (edge/core/alert_ack.py). Until then it is re-sent after
alerts.ack_retry_s, doubling to alerts.ack_retry_max_s, jittered, and at once (jittered) after a
reconnect; past alerts.ack_overdue_s it is reported once through `on_overdue` (audited) and counted
in the status, never dropped for being late. After a restart everything still in the spool is sent
again (the back office dedupes by alert_id and acknowledges duplicates again). A heartbeat thread
publishes the retained online status on every connect and every mqtt.status_interval_s.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from edge.core.alert_ack import ACK_TOPIC_SUFFIX, AckRejected, open_ack
from edge.core.alert_message import build_alert, build_status
from edge.core.config import Config
from edge.core.keys import DeviceKeys, load_device_keys, load_ed25519_public, load_x25519_public, storage_key
from edge.core.mqtt import LinkSettings, Message, MqttLink, PublishHandle
from edge.core.types import MatchEvent
from edge.device.spool import DropCallback, Spool
from edge.device.status import (
    DeliveryStatus,
    LinkStatus,
    ServiceState,
    Status,
)

log = logging.getLogger("lfr_edge.alerts")

StatusProvider = Callable[[], Status]
SPOOL_FILE = "spool.db"
STORAGE_KEY = "storage.key"
_EXPIRE_EVERY_S = 60.0
_OVERDUE_EVERY_S = 1.0
_MAX_TRACKED = 100_000
OverdueCallback = Callable[[str, float], None]  # (alert id, seconds since it was raised)


class Delivery(enum.Enum):
    """How far `flush` waits."""

    BROKER = "broker"  # every spooled record has been accepted by the broker at least once
    BACKOFFICE = "backoffice"  # the spool is empty: every alert acknowledged by the back office


@dataclasses.dataclass(frozen=True, slots=True)
class AckStatus:
    """End-to-end delivery figures for the status report (alerts.* keys)."""

    delivered: int  # alerts the back office acknowledged (this run, including late ones)
    sent_to_broker: int  # PUBACKs for alerts this run (re-sends included)
    awaiting_ack: int  # alerts in the spool the back office has not acknowledged
    oldest_unacked_age_s: float | None
    overdue: int  # of those, unacknowledged for longer than alerts.ack_overdue_s
    acks_rejected: int  # acknowledgements that did not verify (forged, wrong device)
    refused_by_broker: int  # alert publishes the broker refused (e.g. ACL) this run; the alerts are kept

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class _Puback:
    row_id: int
    handle: PublishHandle
    t: float


@dataclasses.dataclass(frozen=True, slots=True)
class _Acked:
    refs: tuple[str, ...]


class _Reconnected:
    pass


_Event = _Puback | _Acked | _Reconnected | None


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
        ack_signers: list[Ed25519PublicKey] | None = None,
        on_overdue: OverdueCallback | None = None,
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
        self.ack_topic = f"{self.prefix}/{ACK_TOPIC_SUFFIX}"
        self.ack_signers = list(ack_signers or [])
        self.on_overdue = on_overdue
        self.raised = 0
        self.delivered = 0  # alerts acknowledged end to end by the back office
        self.sent_to_broker = 0
        self.acks_rejected = 0
        self.refused_by_broker = 0
        self.latencies_s: deque[float] = deque(maxlen=100_000)  # match → PUBACK, for the benchmark
        self._t_enqueued: dict[int, float] = {}
        self._t_lock = threading.Lock()
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._idle = threading.Event()  # nothing spooled is waiting for its first PUBACK
        self._idle_lock = threading.Lock()
        self._generation = 0  # rows spooled; the drainer sets _idle only if none came during its step
        self._stop = threading.Event()
        self._status_now = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = time.monotonic()
        link.on_connect(self._status_now.set)
        link.on_connect(lambda: self._events.put(_Reconnected()))

    @staticmethod
    def from_config(
        cfg: Config,
        status_provider: StatusProvider | None = None,
        on_drop: DropCallback | None = None,
        link: MqttLink | None = None,
        keys: DeviceKeys | None = None,
        on_overdue: OverdueCallback | None = None,
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
        # The back-office keys the device trusts for watchlists and commands also sign acknowledgements.
        signers = [load_ed25519_public(p) for p in cfg.watchlist.trusted_signers]
        return AlertPublisher(
            cfg, link, spool, keys.ed25519, seal_to, status_provider, ack_signers=signers, on_overdue=on_overdue
        )

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
        row = self.spool.enqueue(self.alerts_topic, alert.payload, "alert", ref=alert.alert_id)
        self._spooled()
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
        self._spooled()
        self._events.put(None)
        return row

    def request_status(self) -> None:
        """Publish the status now rather than at the next interval (e.g. a watchlist outcome)."""
        self._status_now.set()

    def _spooled(self) -> None:
        # After the row is committed: a drainer step that began before it cannot declare idle.
        with self._idle_lock:
            self._generation += 1
            self._idle.clear()

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> AlertPublisher:
        self._stop.clear()
        self._idle.clear()
        if self.ack_signers:
            self.link.subscribe(self.ack_topic, self._on_ack_message, qos=1)
        else:
            log.error(
                "alerts: watchlist.trusted_signers is empty, so back-office acknowledgements cannot be "
                "verified: alerts stay in the spool and are re-sent until the back-office key is configured"
            )
        self.link.start()
        for target, name in ((self._drain, "alerts-drain"), (self._heartbeat, "alerts-status")):
            th = threading.Thread(target=target, name=name, daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def flush(self, timeout: float, until: Delivery = Delivery.BROKER) -> bool:
        """Wait until everything spooled reached the broker (BROKER) or the spool is empty because
        the back office acknowledged every alert (BACKOFFICE); False on timeout."""
        if until is Delivery.BROKER:
            return self._idle.wait(timeout)
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
        st = _DrainState()
        while not self._stop.is_set():
            try:
                self._drain_step(st)
            except Exception:  # e.g. disk full: keep the alerts in the spool and try again
                log.exception("alerts: spool drainer failed; retrying in 1 s")
                self._stop.wait(1.0)

    def _drain_step(self, st: _DrainState) -> None:
        generation = self._generation
        try:
            item: _Event = self._events.get(timeout=0.5)
        except queue.Empty:
            item = None
        sent: list[int] = []
        acked: list[str] = []
        while True:
            if isinstance(item, _Puback):
                self._broker_acknowledged(item, st, sent)
            elif isinstance(item, _Acked):
                acked += item.refs  # a burst of acknowledgements costs one transaction
            elif isinstance(item, _Reconnected):
                # The broker may have restarted and lost what it held: re-send soon, spread out.
                now = time.monotonic()
                spread = min(self.cfg.alerts.ack_retry_s, 5.0)
                for row_id in st.waiting:
                    st.waiting[row_id] = now + random.uniform(0.0, spread)
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                break
        self.spool.delete_many(sent)
        if acked:
            self._backoffice_acknowledged(acked, st)
        now = time.monotonic()
        if now >= st.next_expire:
            self.spool.expire()
            st.next_expire = now + _EXPIRE_EVERY_S
        if now >= st.next_overdue:
            st.next_overdue = now + _OVERDUE_EVERY_S
            self._check_overdue()
        room = self.window - len(st.inflight)
        if room > 0:
            due = sorted(r for r, t in st.waiting.items() if t <= now)[:room]
            if due:
                rows = {r.id: r for r in self.spool.fetch_ids(due)}
                for row_id in due:
                    del st.waiting[row_id]
                    row = rows.get(row_id)
                    if row is None:  # acknowledged or dropped meanwhile
                        st.rows.pop(st.refs.get(row_id, ""), None)
                        st.forget(row_id)
                        continue
                    self._send(row.id, row.topic, row.payload, row.kind, st)
                room = self.window - len(st.inflight)
        fresh = self.spool.fetch_after(st.cursor, room) if room > 0 else []
        for row in fresh:
            st.cursor = row.id
            if row.ref is not None:
                st.refs[row.id] = row.ref
                st.rows[row.ref] = row.id
            self._send(row.id, row.topic, row.payload, row.kind, st)
        if room > 0 and len(fresh) < room and not st.first_pending:
            with self._idle_lock:
                if generation == self._generation:
                    self._idle.set()

    def _send(self, row_id: int, topic: str, payload: bytes, kind: str, st: _DrainState) -> None:
        handle = self.link.publish(topic, payload, qos=1)
        st.inflight[row_id] = kind
        if row_id not in st.attempts:  # never answered by the broker yet
            st.first_pending.add(row_id)
        handle.add_done_callback(self._on_puback(row_id))

    def _on_puback(self, row_id: int) -> Callable[[PublishHandle], None]:
        # Runs on paho's thread: only queue the event, the drainer does the SQLite work.
        def done(handle: PublishHandle) -> None:
            self._events.put(_Puback(row_id, handle, time.monotonic()))

        return done

    def _retry_delay(self, attempts: int) -> float:
        a = self.cfg.alerts
        base = min(a.ack_retry_max_s, a.ack_retry_s * 2.0 ** min(attempts, 30))
        return base * random.uniform(0.5, 1.0)  # jitter: a fleet back from an outage does not resend in step

    def _broker_acknowledged(self, ev: _Puback, st: _DrainState, sent: list[int]) -> None:
        kind = st.inflight.pop(ev.row_id, None)
        st.first_pending.discard(ev.row_id)
        if kind != "alert":
            with self._t_lock:
                self._t_enqueued.pop(ev.row_id, None)
            if ev.handle.ok:
                sent.append(ev.row_id)  # audit records: broker-level delivery, as before
            else:
                # The broker will never take it (e.g. ACL): keeping it would block the spool forever.
                log.error("alerts: broker refused %s (%s); dropping it", ev.handle.topic, ev.handle.reason)
                self.spool.drop(ev.row_id, "refused")
            return
        if ev.handle.ok:
            self.sent_to_broker += 1
            with self._t_lock:
                t0 = self._t_enqueued.pop(ev.row_id, None)
            if t0 is not None:
                self.latencies_s.append(ev.t - t0)
        else:
            # Kept, not dropped: a refusal (ACL, quota) is fixed at the broker and the alert then goes.
            self.refused_by_broker += 1
            log.error("alerts: broker refused %s (%s); kept, retrying", ev.handle.topic, ev.handle.reason)
        if ev.row_id in st.refs:  # not acknowledged by the back office while it was in flight
            attempts = st.attempts.get(ev.row_id, 0)
            st.attempts[ev.row_id] = attempts + 1
            st.waiting[ev.row_id] = time.monotonic() + self._retry_delay(attempts)

    def _backoffice_acknowledged(self, refs: list[str], st: _DrainState) -> None:
        outcome = self.spool.acknowledge(refs)
        self.delivered += outcome.acknowledged + outcome.late
        if outcome.late:
            log.info("alerts: %d dropped alert(s) were stored by the back office after all", outcome.late)
        for ref in refs:
            row_id = st.rows.pop(ref, None)
            if row_id is not None:
                st.forget(row_id)

    def _on_ack_message(self, msg: Message) -> None:
        # paho's thread: verify here (cheap), leave the SQLite work to the drainer.
        try:
            ack = open_ack(msg.payload, self.ack_signers, self.cfg.device.id)
        except AckRejected as e:
            self.acks_rejected += 1
            log.warning("alerts: acknowledgement on %s ignored: %s", msg.topic[:200], e)
            return
        self._events.put(_Acked(ack.alert_ids))

    def _check_overdue(self) -> None:
        now = time.time()
        for alert_id, created in self.spool.mark_overdue(now - self.cfg.alerts.ack_overdue_s):
            age = now - created
            log.warning(
                "alerts: alert %s not acknowledged by the back office after %.0f s; kept, still re-sent",
                alert_id[:64], age,
            )
            if self.on_overdue is not None:
                try:
                    self.on_overdue(alert_id, age)
                except Exception:
                    log.exception("alerts: on_overdue callback failed")

    def ack_status(self) -> AckStatus:
        waiting = self.spool.awaiting_ack()
        age = None if waiting.oldest_created is None else round(max(0.0, time.time() - waiting.oldest_created), 1)
        return AckStatus(
            delivered=self.delivered,
            sent_to_broker=self.sent_to_broker,
            awaiting_ack=waiting.count,
            oldest_unacked_age_s=age,
            overdue=waiting.overdue,
            acks_rejected=self.acks_rejected,
            refused_by_broker=self.refused_by_broker,
        )

    # ----------------------------------------------------------------------- status

    def delivery_status(self) -> DeliveryStatus:
        counters = self.spool.counters()
        return DeliveryStatus(
            raised=self.raised,
            pending=self.spool.pending(),
            dropped={k.removeprefix("dropped."): v for k, v in counters.items() if k.startswith("dropped.") and v},
            # End-to-end acknowledgement (issue 11): delivered counts back-office acknowledgements only.
            ack=self.ack_status(),
        )

    def link_status(self) -> LinkStatus:
        st = self.link.stats
        return LinkStatus(broker=st.broker, protocol=st.protocol, reconnects=max(0, st.connects - 1))

    def status(self) -> Status:
        """The appliance's status when it provides one (it includes this publisher's parts), else
        this publisher's own (a publisher without a camera loop: `alerts test`, the benchmark)."""
        if self.status_provider is not None:
            try:
                return self.status_provider()
            except Exception:
                log.exception("alerts: status provider failed; publishing the publisher's own status")
        return self.own_status()

    def own_status(self) -> Status:
        """Device facts and this publisher's parts only: no camera, list or policy in this process."""
        return Status.of_device(
            self.cfg,
            ServiceState.ONLINE,
            time.monotonic() - self._started,
            alerts=self.delivery_status(),
            mqtt=self.link_status(),
        )

    def _heartbeat(self) -> None:
        interval = self.cfg.mqtt.status_interval_s
        while not self._stop.is_set():
            self._status_now.wait(interval)
            self._status_now.clear()
            if self._stop.is_set():
                break
            if self.link.connected:
                payload = build_status(self.status().to_json(), self.cfg.device.id, self.signer)
                self.link.publish(self.status_topic, payload, qos=1, retain=True)


@dataclasses.dataclass
class _DrainState:
    """The drainer thread's own bookkeeping (never shared)."""

    inflight: dict[int, str] = dataclasses.field(default_factory=dict)  # row → kind, awaiting PUBACK
    first_pending: set[int] = dataclasses.field(default_factory=set)  # rows never PUBACKed yet
    refs: dict[int, str] = dataclasses.field(default_factory=dict)  # alert row → alert id
    rows: dict[str, int] = dataclasses.field(default_factory=dict)  # alert id → row (acknowledgements name ids)
    waiting: dict[int, float] = dataclasses.field(default_factory=dict)  # alert row → monotonic re-send time
    attempts: dict[int, int] = dataclasses.field(default_factory=dict)  # alert row → PUBACKs or refusals
    cursor: int = 0  # last row handed to the link for the first time
    next_expire: float = 0.0
    next_overdue: float = 0.0

    def forget(self, row_id: int) -> None:
        self.refs.pop(row_id, None)
        self.waiting.pop(row_id, None)
        self.attempts.pop(row_id, None)
