"""Builders for alert tests: a device (keys, config, password) and a back office wired to one broker."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from edge.backoffice.listener import AlertListener, Handled, load_backoffice_config
from edge.core.alert_message import VerifiedAlert
from edge.core.keys import generate_backoffice_keys, generate_device_keys
from edge.core.types import Match, MatchEvent, Subject
from edge.lab.localbroker import BACKOFFICE_USER, MosquittoBroker

ROOT = Path(__file__).resolve().parent.parent


def secret(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


@dataclass
class Device:
    id: str
    dir: Path
    config: Path

    @property
    def public_key(self) -> Path:
        return self.dir / "keys" / "device_ed25519.pub.pem"


def make_backoffice_keys(root: Path) -> Path:
    d = root / "bo-keys"
    if not d.exists():
        generate_backoffice_keys(d)
    return d


def make_device(
    root: Path,
    broker: MosquittoBroker,
    device_id: str,
    password: str,
    seal_to: Path | None = None,
    username: str | None = None,
    ca_file: Path | None = None,
    ack: dict[str, float] | None = None,
    **mqtt: Any,
) -> Device:
    ack = dict(ack or {})  # alerts.ack_retry_s etc.
    d = root / device_id
    keys = d / "keys"
    if not keys.exists():
        generate_device_keys(keys)
    cfg: dict[str, Any] = {
        "device": {"id": device_id, "data_dir": str(d / "data"), "keys_dir": str(keys)},
        "mqtt": {
            "brokers": [broker.uri],
            "username": username or device_id,
            "password_file": str(secret(d / "mqtt.pw", password)),
            "tls": {"ca_file": str(ca_file or broker.ca_file)} if broker.tls else {},
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            "status_interval_s": 2.0,
            **mqtt,
        },
        "alerts": {"seal_to": str(seal_to), **ack} if seal_to else ack,
    }
    signer = seal_to.parent / "backoffice_ed25519.pub.pem" if seal_to else None
    if signer is not None and signer.exists():
        # The back office that unseals the alerts also acknowledges them (and signs the lists).
        cfg["watchlist"] = {"trusted_signers": [str(signer)]}
    path = d / "device.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Device(device_id, d, path)


def make_backoffice(
    root: Path,
    broker: MosquittoBroker,
    devices: dict[str, Path],
    password: str,
    unseal: bool = True,
    **extra: Any,
) -> Path:
    keys = make_backoffice_keys(root)
    cfg: dict[str, Any] = {
        "brokers": [broker.uri],
        "client_id": "bo-listener",
        "username": BACKOFFICE_USER,
        "password_file": str(secret(root / "bo.pw", password)),
        "tls": {"ca_file": str(broker.ca_file)} if broker.tls else {},
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "devices": {dev: {"public_key": str(pk)} for dev, pk in devices.items()},
    }
    if unseal:
        cfg["unseal_key"] = str(keys)
    cfg.update(extra)
    path = root / "backoffice.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def lfr_edge(*args: str, **kw: Any) -> subprocess.Popen[str]:
    """`lfr-edge ARGS` as a child process (text pipes), from this checkout."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "edge", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        **kw,
    )


def event(i: int, crop: bytes | None = None) -> MatchEvent:
    return MatchEvent(
        match=Match(Subject(f"S-{i:04d}", "wanted", 2), score=0.7123, margin=0.15, threshold=0.55),
        track_id=i,
        frame_seq=100 + i,
        t_wall=time.time(),
        camera="cam0",
        bbox=(10.0, 20.5, 110.25, 140.0),
        frames_fused=3,
        watchlist_version=7,
        crop_jpeg=crop,
    )


def face_jpeg() -> bytes:
    img = (np.arange(150 * 150 * 3) % 251).astype(np.uint8).reshape(150, 150, 3)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return bytes(buf)


class Received:
    """What a back-office listener got: verified alerts, rejections and statuses, in arrival order."""

    def __init__(self) -> None:
        self.alerts: list[VerifiedAlert] = []
        self.rejects: list[tuple[str, str]] = []
        self.statuses: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()

    def alert(self, a: VerifiedAlert) -> Handled:
        with self.cond:
            self.alerts.append(a)
            self.cond.notify_all()
        return Handled.STORED  # this list is the test's store: acknowledge, as a storing back office does

    def reject(self, topic: str, reason: str) -> None:
        with self.cond:
            self.rejects.append((topic, reason))
            self.cond.notify_all()

    def status(self, device: str, s: dict[str, Any]) -> None:
        with self.cond:
            self.statuses.append((device, s))
            self.cond.notify_all()

    def wait(self, pred: Any, timeout: float = 20.0) -> bool:
        with self.cond:
            return bool(self.cond.wait_for(pred, timeout))


def start_listener(bo_config: Path, broker: MosquittoBroker) -> tuple[AlertListener, Received]:
    got = Received()
    cfg = load_backoffice_config(bo_config)
    listener = AlertListener(cfg, got.alert, got.reject, got.status).start()
    assert listener.link.wait_connected(20), listener.link.stats.last_error
    assert broker.wait_subscribed(cfg.client_id, f"{cfg.topic_root}/+/alerts")
    return listener, got
