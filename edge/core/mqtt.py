"""The appliance's only way out: one supervised paho-mqtt 2.x connection.

`MqttLink` connects to the first reachable broker of a list (failover in order), speaks MQTT v5 and
falls back to 3.1.1 when a broker refuses v5 (protocol: auto), verifies TLS against the configured CA,
reconnects with capped exponential backoff, leaves a retained Last Will on `<prefix>/status`, and
re-subscribes its subscriptions on every connect so other parts (watchlist sync) can share it.

A supervisor thread owns connecting; paho's own network thread (loop_start) owns the socket while
connected, so `publish` is safe from any thread. Each publish returns a `PublishHandle` that is
completed by the broker's PUBACK; the alert spool deletes a row only then. Messages handed to paho
and not yet acknowledged are re-sent by paho after a reconnect, and re-published on a fresh client
when the protocol version has to change.

Each connect attempt ends in a typed `ConnectOutcome` (a `ConnectResult` and the broker's reason
code), and the link is in one `LinkState`; control flow branches on those, never on message text.
A failure to connect is logged as one clear line (wrong password, untrusted CA, refused, timeout)
the first time it happens; identical repeats go to DEBUG while the link keeps retrying.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import json
import logging
import random
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.core.config import BrokerURI, Config
from edge.core.errors import InputError

log = logging.getLogger("lfr_edge.mqtt")


def _unix_socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


# paho (1.x and 2.x, still in 2.2) wakes its network thread through a pair of sockets it builds in
# `_socketpair_compat` from a TCP *listener* on 127.0.0.1, a Windows-era workaround (see
# eclipse-paho/paho.mqtt.python#27 and #9 for the failures that loopback listener causes on embedded
# systems). The device must never listen, not even briefly on loopback, and paho has no option to
# use socket.socketpair(). So, scoped to our own `loop_start` call (the only place paho makes the pair
# for a threaded client) and under a lock, its private factory is swapped for a Unix socketpair and
# then restored: other paho users in the process keep paho as shipped (one starting its loop in that
# same instant would get a Unix pair too, which is harmless). tests/test_alerts_outage.py checks
# that no socket ever listens, so a paho release that renames the factory fails a test, not silently.
_PAIR_LOCK = threading.Lock()


@contextlib.contextmanager
def _unix_wakeup_pair() -> Iterator[None]:
    # Read the original under the lock: two links starting at once must not restore each other's swap.
    with _PAIR_LOCK:
        original = getattr(paho, "_socketpair_compat", None)
        if original is None or not hasattr(socket, "AF_UNIX"):
            yield
            return
        setattr(paho, "_socketpair_compat", _unix_socketpair)  # noqa: B010
        try:
            yield
        finally:
            setattr(paho, "_socketpair_compat", original)  # noqa: B010


def _loop_start(client: paho.Client) -> None:
    with _unix_wakeup_pair():
        client.loop_start()


OFFLINE = json.dumps({"state": "offline"}, separators=(",", ":")).encode()
CONNECT_TIMEOUT_S = 10.0
# CONNACK codes that mean "your credentials are wrong". paho 2.x reports a v3.1.1 return code as the
# equivalent v5 reason code (4 → 134, 5 → 135), so one set serves both protocols; the raw v3.1.1
# codes stay in case a paho release stops translating.
_AUTH_CODES = {134, 135, 4, 5}  # Bad user name or password, Not authorized
_UNSUPPORTED_PROTOCOL = {132, 1}  # v5 "Unsupported Protocol Version", v3 "unacceptable protocol version"


class LinkState(enum.Enum):
    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"  # the last attempt failed; waiting before the next broker


class ConnectResult(enum.Enum):
    """How one connect attempt ended."""

    CONNECTED = "connected"
    TCP_REFUSED = "tcp_refused"  # nothing listens: broker down or wrong port
    TIMEOUT = "timeout"  # no TCP answer within CONNECT_TIMEOUT_S
    UNREACHABLE = "unreachable"  # DNS, routing and other socket errors
    TLS_UNTRUSTED = "tls_untrusted"  # the broker's certificate does not chain to our CA
    TLS_FAILED = "tls_failed"  # any other TLS handshake failure
    TLS_CONFIG = "tls_config"  # our CA or client certificate cannot be loaded
    NO_CONNACK = "no_connack"  # TCP (and TLS) up, but the broker never answered the CONNECT
    DROPPED = "dropped"  # the broker closed the connection with a socket error before CONNACK
    CLOSED = "closed"  # the broker hung up silently before CONNACK
    PROTOCOL_FALLBACK = "protocol_fallback"  # the broker refused MQTT v5: retry at once with 3.1.1
    AUTH_REFUSED = "auth_refused"  # wrong user name or password, or not authorised
    REFUSED = "refused"  # any other CONNACK refusal


@dataclass(frozen=True, slots=True)
class ConnectOutcome:
    result: ConnectResult
    broker: str
    message: str = ""  # the one line logged for a failure; empty when connected
    reason_code: int | None = None  # the CONNACK code, when the broker sent one

    @property
    def ok(self) -> bool:
        return self.result is ConnectResult.CONNECTED


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int


MessageCallback = Callable[[Message], None]


@dataclass(frozen=True)
class LinkSettings:
    brokers: tuple[str, ...]
    client_id: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_no_verify: bool = False
    protocol: str = "auto"  # v5 | v311 | auto
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    will_topic: str | None = None
    will_payload: bytes = OFFLINE
    clean_start: bool = True
    session_expiry_s: int = 0  # v5: how long the broker keeps our session (and queued QoS 1) offline
    max_inflight: int = 20
    # v5: the largest packet this client accepts (0: no limit). The broker then never sends it a
    # larger message, so an oversized payload is not received into memory at all.
    max_packet_size: int = 0

    @staticmethod
    def from_connection(conn: Any, client_id: str, will_topic: str | None, **extra: Any) -> LinkSettings:
        """From any config section with the broker connection keys (the device's `mqtt`, the back
        office's config): brokers, username, password_file, tls, protocol, keepalive, reconnect."""
        return LinkSettings(
            brokers=tuple(conn.brokers),
            client_id=client_id,
            username=conn.username,
            password=read_password(conn.password_file) if conn.password_file else None,
            ca_file=conn.tls.ca_file,
            cert_file=conn.tls.cert_file,
            key_file=conn.tls.key_file,
            insecure_no_verify=conn.tls.insecure_no_verify,
            protocol=conn.protocol,
            keepalive_s=conn.keepalive_s,
            reconnect_min_s=conn.reconnect_min_s,
            reconnect_max_s=conn.reconnect_max_s,
            will_topic=will_topic,
            **extra,
        )

    @staticmethod
    def from_config(cfg: Config) -> LinkSettings:
        m = cfg.mqtt
        return LinkSettings.from_connection(
            m,
            m.client_id or f"lfr-edge-{cfg.device.id}",
            f"{cfg.topic_prefix}/status",
            max_packet_size=device_max_packet(cfg),
        )


# Room for the PUBLISH header and topic around the largest bundle the device accepts.
PACKET_OVERHEAD = 64 << 10
MQTT_MAX_PACKET = 268_435_455  # the largest Maximum Packet Size the protocol (and paho) allows


def device_max_packet(cfg: Config) -> int:
    """The largest message a device takes over MQTT: its watchlist.max_bundle_mb plus the header."""
    return min(MQTT_MAX_PACKET, int(cfg.watchlist.max_bundle_mb * (1 << 20)) + PACKET_OVERHEAD)


def read_password(path: Path) -> str:
    try:
        return path.read_text().rstrip("\r\n")
    except OSError as e:
        raise InputError(f"{path}: cannot read the MQTT password file ({e.strerror})") from None


class PublishHandle:
    """Completes when the broker acknowledges (QoS 1 PUBACK) or, for QoS 0, when the bytes are sent."""

    _seq = itertools.count()

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain
        self.seq = next(self._seq)
        self.reason_code: int | None = None
        self.reason: str = ""
        self._event = threading.Event()
        self._callbacks: list[Callable[[PublishHandle], None]] = []
        self._lock = threading.Lock()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    @property
    def ok(self) -> bool:
        """Acknowledged with success (a v5 broker may refuse with e.g. 135 Not authorized)."""
        return self.done and self.reason_code is not None and self.reason_code < 128

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def add_done_callback(self, fn: Callable[[PublishHandle], None]) -> None:
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _complete(self, reason_code: int, reason: str) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason_code, self.reason = reason_code, reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # a consumer's bug must not kill paho's network thread
                log.exception("publish callback failed")


@dataclass
class LinkStats:
    connect_attempts: int = 0
    connects: int = 0
    disconnects: int = 0
    last_error: str = ""
    broker: str = ""  # the broker currently (or last) connected
    protocol: str = ""
    published: int = 0
    acked: int = 0
    errors: list[str] = field(default_factory=list)  # distinct error lines logged, oldest first
    state: LinkState = LinkState.STOPPED
    last_outcome: ConnectOutcome | None = None
    # The results of the latest attempts, oldest first (bounded: a link retries for days).
    results: deque[ConnectResult] = field(default_factory=lambda: deque(maxlen=64))


def _reason_value(rc: Any) -> int:
    value = getattr(rc, "value", rc)
    return int(value) if isinstance(value, int) else 0


class _ConnackWait:
    """What paho's callbacks report about the attempt in progress."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.code: int | None = None
        self.reason = ""
        self.socket_error = ""  # what paho logged when the socket failed (e.g. a TLS alert)


class MqttLink:
    def __init__(self, settings: LinkSettings, name: str = "mqtt") -> None:
        if not settings.brokers:
            raise InputError("mqtt.brokers: at least one broker URI is needed")
        self.settings = settings
        self.name = name
        self.brokers = [BrokerURI.parse(u) for u in settings.brokers]
        self.stats = LinkStats()
        self._use_v5 = [settings.protocol in ("v5", "auto")] * len(self.brokers)
        self._silent_closes = [0] * len(self.brokers)
        self._subs: dict[str, tuple[int, MessageCallback]] = {}
        self._connect_listeners: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: paho.Client | None = None
        self._client_v5 = True
        self._client_tls = False
        self._client_lock = threading.RLock()  # replacing the client vs publishing on it
        self._mid_lock = threading.Lock()  # mid → handle map; never held while calling into paho
        self._by_mid: dict[int, PublishHandle] = {}
        self._early: dict[int, tuple[int, str]] = {}  # PUBACK that beat publish() to the map
        self._pending: dict[int, PublishHandle] = {}  # seq → not yet acknowledged, for a new client
        self._qos0: set[int] = set()
        self._outcome = _ConnackWait()
        self._logged: set[str] = set()
        self._current = ""

    @staticmethod
    def from_config(cfg: Config) -> MqttLink:
        return MqttLink(LinkSettings.from_config(cfg))

    # ----------------------------------------------------------------------- public API

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> MqttLink:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._supervise, name=f"{self.name}-link", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0, offline_status: bool = True) -> None:
        """Say goodbye (retained offline status, since a clean disconnect suppresses the Will) and close."""
        if self.connected and offline_status and self.settings.will_topic:
            self.publish(self.settings.will_topic, self.settings.will_payload, qos=1, retain=True).wait(
                min(2.0, timeout)
            )
        self._stop.set()
        with self._client_lock:
            client = self._client
        if client is not None:
            client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def subscribe(self, topic_filter: str, callback: MessageCallback, qos: int = 1) -> None:
        """Kept across reconnects; the callback runs on paho's network thread, so keep it short."""
        self._subs[topic_filter] = (qos, callback)
        with self._client_lock:
            client = self._client
        if client is not None and self.connected:
            client.subscribe(topic_filter, qos=qos)

    def on_connect(self, fn: Callable[[], None]) -> None:
        """Called (on the network thread) after every successful connect, e.g. to publish status."""
        self._connect_listeners.append(fn)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> PublishHandle:
        handle = PublishHandle(topic, payload, qos, retain)
        with self._mid_lock:
            self._pending[handle.seq] = handle
        handle.add_done_callback(self._forget)
        with self._client_lock:
            if self._client is not None:
                self._send(self._client, handle)
            # with no client yet, the handle waits in _pending and goes out on the first connect
        return handle

    def pending_count(self) -> int:
        with self._mid_lock:
            return len(self._pending)

    # ----------------------------------------------------------------------- publishing internals

    def _forget(self, handle: PublishHandle) -> None:
        with self._mid_lock:
            self._pending.pop(handle.seq, None)
        self.stats.acked += 1

    def _send(self, client: paho.Client, handle: PublishHandle) -> None:
        info = client.publish(handle.topic, handle.payload, qos=handle.qos, retain=handle.retain)
        self.stats.published += 1
        if handle.qos == 0:
            # No acknowledgement exists for QoS 0; remember the mid so its on_publish is not
            # mistaken for the PUBACK of a later QoS 1 message.
            with self._mid_lock:
                if self._early.pop(info.mid, None) is None:
                    self._qos0.add(info.mid)
            handle._complete(0, "sent")
            return
        with self._mid_lock:
            self._qos0.discard(info.mid)
            early = self._early.pop(info.mid, None)
            if early is None:
                self._by_mid[info.mid] = handle
        if early is not None:
            handle._complete(*early)

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        code, text = _reason_value(rc), str(rc)
        with self._mid_lock:
            if mid in self._qos0:
                self._qos0.discard(mid)
                return
            handle = self._by_mid.pop(mid, None)
            if handle is None:
                self._early[mid] = (code, text)
        if handle is not None:
            if code >= 128:
                log.error("%s: broker refused a publish on %s: %s", self.name, handle.topic, text)
            handle._complete(code, text)

    # ----------------------------------------------------------------------- connection internals

    def _new_client(self, v5: bool) -> paho.Client:
        s = self.settings
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else s.clean_start,
            reconnect_on_failure=False,  # the supervisor reconnects, so it can fail over and back off
        )
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(0)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.will_topic:
            client.will_set(s.will_topic, s.will_payload, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_log = self._on_log
        return client

    def _tls_context(self) -> ssl.SSLContext:
        s = self.settings
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if s.insecure_no_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif s.ca_file is not None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(s.ca_file))
        if s.cert_file is not None:
            ctx.load_cert_chain(str(s.cert_file), str(s.key_file) if s.key_file else None)
        return ctx

    def _install_client(self, v5: bool, tls: bool) -> paho.Client:
        """Reuse the client unless protocol or TLS changes; then move unacknowledged publishes over."""
        with self._client_lock:
            if self._client is not None and (self._client_v5, self._client_tls) == (v5, tls):
                return self._client
            client = self._new_client(v5)
            if tls:
                try:
                    client.tls_set_context(self._tls_context())
                except (OSError, ssl.SSLError) as e:
                    raise InputError(f"mqtt.tls: cannot load CA or client certificate ({e})") from None
            with self._mid_lock:
                self._by_mid.clear()
                self._early.clear()
                self._qos0.clear()
                carry = [self._pending[k] for k in sorted(self._pending)]
            self._client, self._client_v5, self._client_tls = client, v5, tls
            for handle in carry:
                self._send(client, handle)
            return client

    def _connect_properties(self, v5: bool) -> Properties | None:
        s = self.settings
        if not v5 or not (s.session_expiry_s or s.max_packet_size):
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if s.session_expiry_s:
            props.SessionExpiryInterval = s.session_expiry_s
        if s.max_packet_size:
            props.MaximumPacketSize = s.max_packet_size
        return props

    def _try_connect(self, index: int) -> ConnectOutcome:
        """One attempt at broker `index`, recorded in stats."""
        try:
            outcome = self._attempt(index)
        except InputError as e:  # our CA or client certificate cannot be loaded
            outcome = ConnectOutcome(ConnectResult.TLS_CONFIG, str(self.brokers[index]), str(e))
        if not outcome.ok:  # a success is recorded by _on_connect, before anyone sees `connected`
            self._record(outcome)
        return outcome

    def _record(self, outcome: ConnectOutcome) -> None:
        self.stats.last_outcome = outcome
        self.stats.results.append(outcome.result)

    def _attempt(self, index: int) -> ConnectOutcome:
        uri, v5 = self.brokers[index], self._use_v5[index]
        broker = str(uri)

        def fail(result: ConnectResult, message: str, code: int | None = None) -> ConnectOutcome:
            return ConnectOutcome(result, broker, message, code)

        client = self._install_client(v5, uri.tls)
        self._outcome = outcome = _ConnackWait()
        self._current = broker
        self.stats.connect_attempts += 1
        try:
            with self._client_lock:
                client.connect(
                    uri.host,
                    uri.port,
                    keepalive=self.settings.keepalive_s,
                    clean_start=self.settings.clean_start if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
                    properties=self._connect_properties(v5),
                )
        except ssl.SSLCertVerificationError as e:
            where = f"mqtt.tls.ca_file ({self.settings.ca_file})" if self.settings.ca_file else "the system CAs"
            return fail(
                ConnectResult.TLS_UNTRUSTED, f"TLS certificate of {uri} is not trusted by {where}: {e.verify_message}"
            )
        except ssl.SSLError as e:
            return fail(ConnectResult.TLS_FAILED, f"TLS handshake with {uri} failed: {e.reason or e}")
        except ConnectionRefusedError:
            return fail(ConnectResult.TCP_REFUSED, f"{uri} refused the TCP connection (is the broker running?)")
        except TimeoutError:
            return fail(ConnectResult.TIMEOUT, f"{uri} did not answer within {CONNECT_TIMEOUT_S:.0f} s")
        except OSError as e:
            return fail(ConnectResult.UNREACHABLE, f"cannot reach {uri}: {e.strerror or e}")
        _loop_start(client)
        if not outcome.event.wait(CONNECT_TIMEOUT_S + self.settings.keepalive_s):
            self._end_loop(client)
            return fail(ConnectResult.NO_CONNACK, f"{uri} accepted TCP but sent no CONNACK")
        if outcome.code == 0:
            self._silent_closes[index] = 0
            return ConnectOutcome(ConnectResult.CONNECTED, broker, reason_code=0)
        self._end_loop(client)
        code = outcome.code
        auto = v5 and self.settings.protocol == "auto"
        if code is None:
            if outcome.socket_error:
                # A TLS broker that drops us mid-handshake while we present no certificate most
                # likely wants one: say so, whatever words the TLS library used.
                hint = " (does the broker require a client certificate? mqtt.tls.cert_file)" if (
                    uri.tls and self.settings.cert_file is None
                ) else ""
                return fail(
                    ConnectResult.DROPPED, f"{uri} dropped the connection before CONNACK: {outcome.socket_error}{hint}"
                )
            if auto:
                # Some MQTT 3.1 brokers just hang up on a v5 CONNECT instead of answering it; twice
                # in a row, so that one broker restart mid-handshake does not cost us v5 for good.
                self._silent_closes[index] += 1
                if self._silent_closes[index] >= 2:
                    self._use_v5[index] = False
                    return fail(
                        ConnectResult.PROTOCOL_FALLBACK,
                        f"{uri} closed the connection before CONNACK; retrying with MQTT 3.1.1",
                    )
            return fail(ConnectResult.CLOSED, f"{uri} closed the connection before CONNACK")
        if code in _UNSUPPORTED_PROTOCOL and auto:
            self._use_v5[index] = False
            return fail(ConnectResult.PROTOCOL_FALLBACK, f"{uri} does not speak MQTT v5; retrying with MQTT 3.1.1", code)
        if code in _AUTH_CODES:
            return fail(
                ConnectResult.AUTH_REFUSED,
                f"{uri} refused the login for user {self.settings.username!r}: {outcome.reason} "
                "(check mqtt.username and mqtt.password_file)",
                code,
            )
        return fail(ConnectResult.REFUSED, f"{uri} refused the connection: {outcome.reason}", code)

    def _end_loop(self, client: paho.Client) -> None:
        client.disconnect()
        client.loop_stop()
        self._connected.clear()

    def _backoff(self, failures: int) -> float:
        s = self.settings
        delay = min(s.reconnect_max_s, s.reconnect_min_s * 2 ** min(failures, 30))
        return float(delay * random.uniform(0.8, 1.0))  # jitter: a fleet must not reconnect in lockstep

    def _report(self, error: str, delay: float) -> None:
        self.stats.last_error = error
        line = f"{self.name}: {error}; retrying with backoff (next in {delay:.1f} s)"
        if error not in self._logged:
            self._logged.add(error)
            self.stats.errors.append(error)
            log.error(line)
        else:
            log.debug(line)

    def _supervise(self) -> None:
        failures, index = 0, 0
        while not self._stop.is_set():
            self.stats.state = LinkState.CONNECTING
            outcome = self._try_connect(index)
            if outcome.ok:
                failures = 0
                self._logged.clear()
                self._wait_disconnect()
                if self._stop.is_set():
                    break
                continue  # reconnect at once to the same broker; back off only if that fails
            if outcome.result is ConnectResult.PROTOCOL_FALLBACK:
                log.warning("%s: %s", self.name, outcome.message)
                continue
            self.stats.state = LinkState.BACKING_OFF
            delay = self._backoff(failures)
            self._report(outcome.message, delay)
            failures += 1
            index = (index + 1) % len(self.brokers)  # fail over to the next broker
            self._stop.wait(delay)
        with self._client_lock:
            client = self._client
        if client is not None:
            client.loop_stop()
        self._connected.clear()
        self.stats.state = LinkState.STOPPED

    def _wait_disconnect(self) -> None:
        with self._client_lock:
            client = self._client
        assert client is not None
        while not self._stop.is_set() and self._connected.is_set():
            self._stop.wait(0.2)
        client.loop_stop()

    # ----------------------------------------------------------------------- paho callbacks

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        code = _reason_value(rc)
        outcome = self._outcome
        outcome.code, outcome.reason = code, str(rc)
        if code == 0:
            self.stats.connects += 1
            self.stats.broker, self.stats.protocol = self._current, "v5" if self._client_v5 else "v3.1.1"
            self._record(ConnectOutcome(ConnectResult.CONNECTED, self._current, reason_code=0))
            self.stats.state = LinkState.CONNECTED
            self._connected.set()
            for topic_filter, (qos, _) in list(self._subs.items()):
                client.subscribe(topic_filter, qos=qos)
            with self._mid_lock:
                sent = {h.seq for h in self._by_mid.values()}
                unsent = [h for h in self._pending.values() if h.seq not in sent]
            for handle in sorted(unsent, key=lambda h: h.seq):
                self._send(client, handle)
            log.info("%s: connected (%s)", self.name, "MQTT v5" if self._client_v5 else "MQTT 3.1.1")
            for fn in list(self._connect_listeners):
                try:
                    fn()
                except Exception:
                    log.exception("%s: on_connect listener failed", self.name)
        outcome.event.set()

    def _on_log(self, client: Any, userdata: Any, level: int, buf: str) -> None:
        # The first error explains; paho's later "Client is not connected" lines are consequences.
        if level == paho.MQTT_LOG_ERR and not self._connected.is_set() and not self._outcome.socket_error:
            self._outcome.socket_error = buf.removeprefix("failed to receive on socket: ")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._outcome.event.set()
        if was:
            if not self._stop.is_set():
                self.stats.state = LinkState.CONNECTING  # the supervisor reconnects at once
            self.stats.disconnects += 1
            if not self._stop.is_set():
                log.warning("%s: connection lost (%s); reconnecting", self.name, rc)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        message = Message(topic=msg.topic, payload=bytes(msg.payload), retain=bool(msg.retain), qos=msg.qos)
        for topic_filter, (_, callback) in list(self._subs.items()):
            if paho.topic_matches_sub(topic_filter, msg.topic):
                try:
                    callback(message)
                except Exception:
                    log.exception("%s: message handler for %s failed", self.name, topic_filter)
