"""The service main loop talks to systemd: READY=1, then WATCHDOG=1 only while frames are processed."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge.core.config import parse_config
from edge.core.keys import generate_device_keys
from edge.core.types import U8
from edge.device.camera.base import FrameSource
from edge.device.sdnotify import Notifier
from edge.device.service import serve


class FreezingCamera(FrameSource):
    """A live 30 fps camera whose driver freezes after `n` frames (no error, just no frames)."""

    live = True
    name = "freezing"

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.i = n, 0
        self.release = threading.Event()
        self.image = np.random.default_rng(1).integers(0, 255, (360, 640, 3), dtype=np.uint8)

    def open(self) -> None:
        pass

    def _grab(self) -> U8 | None:
        if self.i >= self.n:
            self.release.wait(30)
            return None
        self.i += 1
        time.sleep(1 / 30)
        return self.image.copy()

    def close(self) -> None:
        self.release.set()


def test_ready_then_watchdog_pings_that_stop_when_the_camera_stalls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock_path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # systemd would restart us after 0.2 s without a ping
    generate_device_keys(tmp_path / "keys")
    cfg = parse_config(
        {
            "device": {"data_dir": str(tmp_path / "data"), "keys_dir": str(tmp_path / "keys")},
            "camera": {"source": "picamera2"},
            "mqtt": {"brokers": ["mqtt://127.0.0.1:9"]},  # unreachable: alerts would stay spooled
            "alerts": {"allow_unsealed": True, "allow_unsealed_reason": "test rig: no back-office sealing key"},
        },
        tmp_path,
    )
    cam = FreezingCamera(n=90)  # ~3 s of frames, then frozen
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(cfg, cam), kwargs={"stop": stop, "notifier": Notifier()})
    t.start()
    messages: list[tuple[float, bytes]] = []
    try:
        start = time.monotonic()
        deadline = start + 60

        def quiet_for() -> float:
            return time.monotonic() - (messages[-1][0] if messages else start)

        # Listen while the camera delivers, then until systemd would have heard nothing for 1.5 s.
        while time.monotonic() < deadline and (cam.i < cam.n or quiet_for() < 1.5):
            with contextlib.suppress(TimeoutError):
                messages.append((time.monotonic(), sock.recv(4096)))
        frozen_at = time.monotonic()
    finally:
        stop.set()
        cam.release.set()
        t.join(10)
    assert not t.is_alive()
    kinds = [m.split(b"\n")[0] for _, m in messages]
    assert kinds[0] == b"READY=1"
    pings = [ts for (ts, m) in messages if m == b"WATCHDOG=1"]
    assert len(pings) >= 5, kinds  # periodic while the camera delivers
    # After the camera froze no ping came for over a second: systemd's watchdog would fire.
    assert frozen_at - pings[-1] > 1.0
