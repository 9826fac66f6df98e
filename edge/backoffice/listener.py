"""Back-office alert listener: verify, unseal, dedupe, hand on. Runs on the back office, never the device.

Subscribes to `<topic_root>/+/alerts` and `<topic_root>/+/status` with QoS 1 on a persistent session
(fixed client id, clean start off, session expiry), so alerts published while it was away are
delivered when it reconnects. Each alert must carry a valid Ed25519 signature by the key registered
for its device (and the device in the message must be the one in the topic); anything else is
reported as rejected and never shown as an alert. Alerts whose signed time is older than
`stale_after_s` are rejected as stale (so an old alert replayed word for word is never new), and
duplicates (at-least-once delivery) are dropped by alert_id. Status messages must be signed by the
device too. Whatever a malformed message provokes ends as a rejection, never as an exception.

End-to-end acknowledgement (docs/ALERTS.md): the alert sink says what it did with an alert
(`Handled`). Only when it has stored the alert durably (STORED), or had stored it before (DUPLICATE),
does the listener publish a signed acknowledgement on `<topic_root>/<device>/ack` (edge/core/alert_ack.py,
signed with the back-office Ed25519 key, `ack_key`); the device deletes the alert from its spool only
then. A sink that raises has stored nothing: no acknowledgement, and the id is not remembered, so the
device's re-send is handled afresh. A duplicate of an alert already stored is acknowledged again
(the first acknowledgement may have been lost) and not shown again.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge.core import topics
from edge.core.alert_ack import ACK_TOPIC_SUFFIX, build_ack
from edge.core.alert_message import AlertRejected, VerifiedAlert, verify_alert, verify_status
from edge.core.config import BrokerList, TLSConfig, bounded
from edge.core.errors import ConfigError, InputError
from edge.core.keys import check_private_file, load_backoffice_keys, load_ed25519_public, load_signing_key
from edge.core.mqtt import LinkSettings, Message, MqttLink, PublishHandle
from edge.core.timefmt import parse_utc
from edge.core.yamlsafe import clip, load_yaml_file, short_repr

log = logging.getLogger("lfr_edge.listener")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceEntry(_Section):
    public_key: Path  # the device's Ed25519 public key (device_ed25519.pub.pem from `lfr-edge keys`)


class BackofficeConfig(_Section):
    brokers: BrokerList = Field(min_length=1)
    client_id: str = "lfr-backoffice"
    username: str | None = None
    password_file: Path | None = None
    tls: TLSConfig = TLSConfig()
    protocol: Literal["v5", "v311", "auto"] = "auto"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    reconnect_min_s: Annotated[float, Field(gt=0)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0)] = 30.0
    topic_root: str = "lfr"
    # How long the broker keeps queuing alerts for this listener while it is not connected.
    session_expiry_s: Annotated[int, Field(ge=0)] = 7 * 24 * 3600
    unseal_key: Path | None = None  # back-office X25519 private key (PEM, 0600), or a keys directory
    # Signs the end-to-end acknowledgements devices wait for before deleting an alert: the back-office
    # Ed25519 private key (PEM, 0600) or keys directory. Default: unseal_key when it is a directory.
    ack_key: Path | None = None
    # Where accepted alert ids are remembered, so duplicates stay dropped across listener restarts.
    state_dir: Path | None = None
    # Alerts whose signed time is older than this are refused as stale, with or without state_dir:
    # a word-for-word replay of an old genuine alert must not be shown as new.
    stale_after_s: Annotated[float, Field(gt=0, le=365 * 24 * 3600)] = 24 * 3600.0
    devices: dict[str, DeviceEntry] = Field(default_factory=dict)

    @field_validator("topic_root")
    @classmethod
    def _plain_topic(cls, v: str) -> str:
        problem = topics.root_problem(v)
        if problem:
            raise ValueError(f"{short_repr(v)} {problem}")
        return v


def _resolve(p: Path | None, base: Path) -> Path | None:
    return None if p is None or p.is_absolute() else base / p


def _explain(err: Any) -> str:
    loc = clip(".".join(str(x) for x in err["loc"]), 120)
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key (see config/backoffice.example.yaml)"
    if err["type"] == "value_error":
        return f"{loc}: {err.get('ctx', {}).get('error', err['msg'])}"
    return f"{loc}: {err['msg']} (got {short_repr(err.get('input'))})"


def _file_problems(data: dict[str, Any], base: Path) -> list[str]:
    """Referenced files, checked on the raw document so they are reported with the schema errors."""

    def path_of(value: Any) -> Path | None:
        if not isinstance(value, str):
            return None
        p = Path(value)
        return p if p.is_absolute() else base / p

    problems = []
    tls = data.get("tls") if isinstance(data.get("tls"), dict) else {}
    assert isinstance(tls, dict)
    for key, value in (
        ("password_file", data.get("password_file")),
        ("tls.ca_file", tls.get("ca_file")),
        ("tls.cert_file", tls.get("cert_file")),
        ("tls.key_file", tls.get("key_file")),
    ):
        p = path_of(value)
        if p is not None and not p.is_file():
            problems.append(f"{key}: {short_repr(value)} does not exist or is not a file")
    for key in ("unseal_key", "ack_key"):
        kp = path_of(data.get(key))
        if kp is not None and not kp.exists():
            problems.append(f"{key}: {short_repr(data.get(key))} does not exist")
    state = path_of(data.get("state_dir"))
    if state is not None and state.exists() and not state.is_dir():
        problems.append(f"state_dir: {short_repr(data.get('state_dir'))} is a file, expected a directory")
    devices = data.get("devices")
    for dev, entry in (devices.items() if isinstance(devices, dict) else []):
        pk = path_of(entry.get("public_key") if isinstance(entry, dict) else None)
        if pk is None:
            continue
        where = f"devices.{clip(str(dev), 64)}.public_key"
        try:
            load_ed25519_public(pk)
        except InputError as e:
            problems.append(f"{where}: {clip(str(e), 200)}")
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
            problems.append(f"{where}: {short_repr(str(pk))} cannot be read ({clip(str(e), 80)})")
    return problems


def parse_backoffice_config(data: Any, base: Path, source: str = "<back-office config>") -> BackofficeConfig:
    """Validate a loaded back-office document; ConfigError lists every problem, one line each."""
    if data is None:
        raise ConfigError([f"{source}: the file is empty; at least brokers and devices are required"])
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping"])
    problems: list[str] = []
    cfg: BackofficeConfig | None = None
    try:
        cfg = BackofficeConfig.model_validate(data)
    except ValidationError as e:
        problems += [_explain(err) for err in e.errors()]
    problems += _file_problems(data, base)
    if problems or cfg is None:
        raise ConfigError(bounded(problems))
    tls = cfg.tls.model_copy(
        update={k: _resolve(getattr(cfg.tls, k), base) or getattr(cfg.tls, k) for k in ("ca_file", "cert_file", "key_file")}
    )
    devices = {d: DeviceEntry(public_key=_resolve(e.public_key, base) or e.public_key) for d, e in cfg.devices.items()}
    return cfg.model_copy(
        update={
            "tls": tls,
            "devices": devices,
            "password_file": _resolve(cfg.password_file, base) or cfg.password_file,
            "unseal_key": _resolve(cfg.unseal_key, base) or cfg.unseal_key,
            "ack_key": _resolve(cfg.ack_key, base) or cfg.ack_key,
            "state_dir": _resolve(cfg.state_dir, base) or cfg.state_dir,
        }
    )


def load_backoffice_config(path: str | Path) -> BackofficeConfig:
    """Read a back-office file through the same bounded loader as the device's (edge.core.yamlsafe)."""
    p = Path(path)
    return parse_backoffice_config(load_yaml_file(p, "back-office config"), p.resolve().parent, str(p))


def link_settings(cfg: BackofficeConfig) -> LinkSettings:
    # A persistent session: the broker queues alerts for the back office while it is away.
    return LinkSettings.from_connection(
        cfg, cfg.client_id, None, clean_start=False, session_expiry_s=cfg.session_expiry_s
    )


def load_device_keys_map(cfg: BackofficeConfig) -> dict[str, Ed25519PublicKey]:
    return {dev: load_ed25519_public(entry.public_key) for dev, entry in cfg.devices.items()}


def load_unseal_key(cfg: BackofficeConfig) -> X25519PrivateKey | None:
    if cfg.unseal_key is None:
        return None
    p = cfg.unseal_key
    if p.is_dir():
        return load_backoffice_keys(p).x25519
    check_private_file(p)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"unseal_key: {p} is not a readable PEM private key ({e})") from None
    if not isinstance(key, X25519PrivateKey):
        raise InputError(f"unseal_key: {p} holds a {type(key).__name__}, expected an X25519 private key")
    return key


def load_ack_key(cfg: BackofficeConfig) -> Ed25519PrivateKey | None:
    """The key acknowledgements are signed with: ack_key, else the keys directory given as unseal_key."""
    p = cfg.ack_key if cfg.ack_key is not None else (
        cfg.unseal_key if cfg.unseal_key is not None and cfg.unseal_key.is_dir() else None
    )
    if p is None:
        return None
    if not p.is_dir():
        check_private_file(p)
    return load_signing_key(p)


class Handled(enum.Enum):
    """What an alert sink did with a verified alert; decides whether the device gets an acknowledgement."""

    STORED = "stored"  # stored durably now (fsynced file, committed row): acknowledge
    DUPLICATE = "duplicate"  # stored durably before: acknowledge again, do not show again
    SHOWN = "shown"  # shown only (nothing durable): no acknowledgement, the device keeps it


SEEN_FILE = "seen_alert_ids"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


def stored_name(alert_id: str) -> str:
    """A file name for an alert: its id when that is a plain token (a UUID), else a hash of it, so a
    device's signed message can never steer a path."""
    if _SAFE_ID.fullmatch(alert_id) and ".." not in alert_id:
        return alert_id
    return "id-" + hashlib.sha256(alert_id.encode("utf-8", "replace")).hexdigest()[:40]
MAX_FUTURE_SKEW_S = 300.0  # a device clock this far ahead is wrong, or the time is forged by its signer


def freshness_problem(alert: VerifiedAlert, stale_after_s: float, now: float | None = None) -> str | None:
    """Why a verified alert must not be shown as new because of its signed time, or None."""
    now = time.time() if now is None else now
    try:
        sent = parse_utc(alert.time, "alert time")
    except ValueError as e:
        return f"malformed alert ({e})"
    age = now - sent
    if age > stale_after_s:
        return f"stale: sent {age / 3600:.1f} h ago ({alert.time}), more than stale_after_s {stale_after_s:g} s"
    if age < -MAX_FUTURE_SKEW_S:
        return f"sent {-age:.0f} s in the future ({alert.time}); the device clock is wrong"
    return None

# Returns what it did (None: SHOWN); raises when it could not store the alert (then it is re-sent).
AlertSink = Callable[[VerifiedAlert], Handled | None]
RejectSink = Callable[[str, str], None]  # (topic, reason)
StatusSink = Callable[[str, dict[str, Any]], None]  # (device_id, status)


class AlertListener:
    def __init__(
        self,
        cfg: BackofficeConfig,
        on_alert: AlertSink,
        on_reject: RejectSink,
        on_status: StatusSink | None = None,
        dedupe_window: int = 100_000,
        ack_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.cfg = cfg
        self.device_keys = load_device_keys_map(cfg)
        self.unseal_key = load_unseal_key(cfg)
        self.ack_key = ack_key if ack_key is not None else load_ack_key(cfg)
        self.on_alert, self.on_reject, self.on_status = on_alert, on_reject, on_status
        self.link = MqttLink(link_settings(cfg), name="listener")
        self._seen: OrderedDict[str, bool] = OrderedDict()  # alert id → stored durably (acknowledged)
        self._window = dedupe_window
        self._lock = threading.Lock()
        self._seen_file: TextIO | None = None
        if cfg.state_dir is not None:
            self._load_seen(cfg.state_dir / SEEN_FILE)
        self.received = 0
        self.duplicates = 0
        self.rejected = 0
        self.failed = 0  # alerts the sink could not store: not acknowledged, the device re-sends them
        self.acks_sent = 0
        self._warned_no_key = False
        self._handling = threading.Lock()  # held while one alert is verified, stored and acknowledged
        self._acks: deque[PublishHandle] = deque(maxlen=1000)

    def start(self) -> AlertListener:
        root = self.cfg.topic_root
        self.link.subscribe(f"{root}/+/alerts", self._alert, qos=1)
        self.link.subscribe(f"{root}/+/status", self._status, qos=1)
        self.link.start()
        return self

    def stop(self, ack_timeout: float = 5.0) -> None:
        # Let the alert being handled finish and its acknowledgement reach the broker: a listener that
        # stops (--count reached, SIGTERM) right after storing an alert still acknowledges it.
        if self._handling.acquire(timeout=ack_timeout):
            self._handling.release()
        deadline = time.monotonic() + ack_timeout
        with self._lock:
            pending = list(self._acks)
        for handle in pending:
            if not handle.wait(max(0.0, deadline - time.monotonic())):
                break
        self.link.stop(offline_status=False)
        if self._seen_file is not None:
            self._seen_file.close()

    def _load_seen(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            # One line per alert: "<id> s" when it was stored (and acknowledged), "<id>" when only shown.
            for line in path.read_text(errors="replace").splitlines()[-self._window :]:
                parts = line.split()
                if parts:
                    self._seen[parts[0]] = self._seen.get(parts[0], False) or parts[1:] == ["s"]
            # Rewrite trimmed, so the file stays as small as the window.
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(f"{i}{' s' if st else ''}\n" for i, st in self._seen.items()))
            os.replace(tmp, path)
        self._seen_file = path.open("a", buffering=1)

    @staticmethod
    def _device_of(topic: str) -> str:
        parts = topic.split("/")
        return parts[-2] if len(parts) >= 2 else ""

    def _reject(self, topic: str, reason: str) -> None:
        self.rejected += 1
        self.on_reject(topic, reason)

    def _alert(self, msg: Message) -> None:
        with self._handling:
            self._handle_alert(msg)

    def _handle_alert(self, msg: Message) -> None:
        try:
            alert = verify_alert(msg.payload, self.device_keys, self.unseal_key, self._device_of(msg.topic))
        except AlertRejected as e:
            self._reject(msg.topic, str(e))
            return
        except Exception as e:  # whatever a hostile message provokes is a REJECTED line, never a traceback
            log.debug("alert verification failed", exc_info=True)
            self._reject(msg.topic, f"malformed alert ({type(e).__name__})")
            return
        with self._lock:
            stored_before = self._seen.get(alert.alert_id)
        if stored_before is not None:
            # A re-send: shown once. If it was stored, its acknowledgement was lost: send it again.
            # (Checked before staleness: a device re-sending what is already stored is never refused.)
            self.duplicates += 1
            if stored_before:
                self._acknowledge(msg.topic, alert)
            return
        try:
            stale = freshness_problem(alert, self.cfg.stale_after_s)
        except Exception as e:
            self._reject(msg.topic, f"malformed alert ({type(e).__name__})")
            return
        if stale:
            self._reject(msg.topic, stale)
            return
        try:
            handled = self.on_alert(alert) or Handled.SHOWN
        except Exception as e:
            # Nothing stored: not acknowledged and not remembered, so the device's re-send is handled afresh.
            self.failed += 1
            log.error(
                "alert %s from %s not stored (%s); not acknowledged, the device will send it again",
                alert.alert_id[:64], alert.device_id[:64], clip(str(e) or type(e).__name__, 200),
            )
            return
        stored = handled is not Handled.SHOWN
        with self._lock:
            self._seen[alert.alert_id] = stored
            self._seen.move_to_end(alert.alert_id)
            if len(self._seen) > self._window:
                self._seen.popitem(last=False)
            if handled is Handled.DUPLICATE:
                self.duplicates += 1
            else:
                self.received += 1
            if self._seen_file is not None:
                self._seen_file.write(alert.alert_id + (" s\n" if stored else "\n"))
        if stored:
            self._acknowledge(msg.topic, alert)

    def _acknowledge(self, topic: str, alert: VerifiedAlert) -> None:
        if self.ack_key is None:
            if not self._warned_no_key:
                self._warned_no_key = True
                log.warning(
                    "no ack_key (nor a keys directory as unseal_key): stored alerts are not acknowledged, "
                    "so devices keep them spooled and keep re-sending them"
                )
            return
        ack_topic = topic.rsplit("/", 1)[0] + "/" + ACK_TOPIC_SUFFIX
        try:
            handle = self.link.publish(ack_topic, build_ack(self.ack_key, alert.device_id, [alert.alert_id]), qos=1)
            with self._lock:
                self._acks.append(handle)
            self.acks_sent += 1
        except Exception:  # the device re-sends and is acknowledged then
            log.exception("acknowledgement of %s not sent", alert.alert_id[:64])

    def _status(self, msg: Message) -> None:
        if not msg.payload:  # a retained status cleared by the back office
            return
        try:
            status = verify_status(msg.payload, self.device_keys, self._device_of(msg.topic))
        except AlertRejected as e:
            self._reject(msg.topic, str(e))
            return
        except Exception as e:
            log.debug("status verification failed", exc_info=True)
            self._reject(msg.topic, f"malformed status ({type(e).__name__})")
            return
        if self.on_status is not None:
            self.on_status(self._device_of(msg.topic), status)
