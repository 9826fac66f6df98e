"""Back-office alert listener: verify, unseal, dedupe, hand on. Runs on the back office, never the device.

Subscribes to `<topic_root>/+/alerts` and `<topic_root>/+/status` with QoS 1 on a persistent session
(fixed client id, clean start off, session expiry), so alerts published while it was away are
delivered when it reconnects. Each alert must carry a valid Ed25519 signature by the key registered
for its device (and the device in the message must be the one in the topic); anything else is
reported as rejected and never shown as an alert. Alerts whose signed time is older than
`stale_after_s` are rejected as stale (so an old alert replayed word for word is never new), and
duplicates (at-least-once delivery) are dropped by alert_id. Status messages must be signed by the
device too. Whatever a malformed message provokes ends as a rejection, never as an exception.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge.core import topics
from edge.core.alert_message import AlertRejected, VerifiedAlert, verify_alert, verify_status
from edge.core.config import BrokerList, TLSConfig, bounded
from edge.core.errors import ConfigError, InputError
from edge.core.keys import check_private_file, load_backoffice_keys, load_ed25519_public
from edge.core.mqtt import LinkSettings, Message, MqttLink
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
    unseal = path_of(data.get("unseal_key"))
    if unseal is not None and not unseal.exists():
        problems.append(f"unseal_key: {short_repr(data.get('unseal_key'))} does not exist")
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


SEEN_FILE = "seen_alert_ids"
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

AlertSink = Callable[[VerifiedAlert], None]
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
    ) -> None:
        self.cfg = cfg
        self.device_keys = load_device_keys_map(cfg)
        self.unseal_key = load_unseal_key(cfg)
        self.on_alert, self.on_reject, self.on_status = on_alert, on_reject, on_status
        self.link = MqttLink(link_settings(cfg), name="listener")
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._window = dedupe_window
        self._lock = threading.Lock()
        self._seen_file: TextIO | None = None
        if cfg.state_dir is not None:
            self._load_seen(cfg.state_dir / SEEN_FILE)
        self.received = 0
        self.duplicates = 0
        self.rejected = 0

    def start(self) -> AlertListener:
        root = self.cfg.topic_root
        self.link.subscribe(f"{root}/+/alerts", self._alert, qos=1)
        self.link.subscribe(f"{root}/+/status", self._status, qos=1)
        self.link.start()
        return self

    def stop(self) -> None:
        self.link.stop(offline_status=False)
        if self._seen_file is not None:
            self._seen_file.close()

    def _load_seen(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            ids = path.read_text().split()[-self._window :]
            self._seen.update((i, None) for i in ids)
            # Rewrite trimmed, so the file stays as small as the window.
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(f"{i}\n" for i in ids))
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
        try:
            alert = verify_alert(msg.payload, self.device_keys, self.unseal_key, self._device_of(msg.topic))
            stale = freshness_problem(alert, self.cfg.stale_after_s)
        except AlertRejected as e:
            self._reject(msg.topic, str(e))
            return
        except Exception as e:  # whatever a hostile message provokes is a REJECTED line, never a traceback
            log.debug("alert verification failed", exc_info=True)
            self._reject(msg.topic, f"malformed alert ({type(e).__name__})")
            return
        if stale:
            self._reject(msg.topic, stale)
            return
        with self._lock:
            if alert.alert_id in self._seen:
                self.duplicates += 1
                return
            self._seen[alert.alert_id] = None
            if len(self._seen) > self._window:
                self._seen.popitem(last=False)
            self.received += 1
            if self._seen_file is not None:
                self._seen_file.write(alert.alert_id + "\n")
        self.on_alert(alert)

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
