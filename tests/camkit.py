"""A device process with small replay cameras, a back-office subscriber with its own credentials, and
bundles built for the device's real embedder: shared by the several-cameras, availability and
`watchlist publish` tests."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from edge.core.config import load_config
from edge.core.keys import load_backoffice_keys, load_device_keys
from edge.core.mqtt import LinkSettings, Message, MqttLink
from edge.core.types import Subject
from edge.core.watchlist.bundle import build_bundle
from edge.device.watchlist.store import embedder_sha256_for, landmarks_sha256_for
from edge.lab.localbroker import MosquittoBroker
from tests.alertkit import Device


def noise_video(path: Path, frames: int = 20, size: tuple[int, int] = (320, 240), fps: float = 10.0) -> Path:
    """A street with nobody in it: noise, no face."""
    rng = np.random.default_rng(5)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


def set_config(dev: Device, **sections: Any) -> None:
    cfg = yaml.safe_load(dev.config.read_text())
    for k, v in sections.items():
        if v is None:
            cfg.pop(k, None)
        elif isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    dev.config.write_text(yaml.safe_dump(cfg))


def bundle_for(dev: Device, bo_keys: Path, version: int, subjects: tuple[str, ...] = ("subject-a",)) -> bytes:
    """A signed bundle for `dev` (random templates: nobody in a test video matches them)."""
    cfg = load_config(dev.config)
    rng = np.random.default_rng(version)
    t = rng.normal(size=(len(subjects), 128)).astype(np.float32)
    return build_bundle(
        subjects=[Subject(s) for s in subjects], templates=t, template_subject=np.arange(len(subjects)),
        signer=load_backoffice_keys(bo_keys).ed25519, recipients=[load_device_keys(dev.dir / "keys").x25519_public],
        version=version, expires_at=time.time() + 86400, embedder_sha256=embedder_sha256_for(cfg),
        landmarks_sha256=landmarks_sha256_for(cfg),
    )  # fmt: skip


class Watcher:
    """Every message on the given filters, as a user with its own broker credentials receives them."""

    def __init__(self, broker: MosquittoBroker, user: str, password: str, *filters: str) -> None:
        self.messages: list[Message] = []
        self.cond = threading.Condition()
        self.link = MqttLink(LinkSettings(
            brokers=(broker.uri,), client_id=f"watcher-{user}-{id(self)}", username=user, password=password,
            ca_file=broker.ca_file if broker.tls else None, reconnect_min_s=0.2, reconnect_max_s=1.0,
        ), name="watcher")  # fmt: skip
        for f in filters:
            self.link.subscribe(f, self._on)
        self.link.start()
        assert self.link.wait_connected(20), self.link.stats.last_error
        for f in filters:
            assert broker.wait_subscribed(self.link.settings.client_id, f)

    def _on(self, msg: Message) -> None:
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def on(self, topic: str) -> list[Message]:
        with self.cond:
            return [m for m in self.messages if m.topic == topic]

    def wait(self, pred: Any, timeout: float = 60.0) -> bool:
        with self.cond:
            return bool(self.cond.wait_for(pred, timeout))

    def close(self) -> None:
        self.link.stop(offline_status=False)
