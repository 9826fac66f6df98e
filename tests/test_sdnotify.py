"""sd_notify against a real unix datagram socket, as systemd would provide it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edge.device.sdnotify import Notifier


@pytest.fixture()
def notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    return s, path


def test_ready_status_and_watchdog(notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s → ping every 0.1 s
    n = Notifier(path)
    assert n.enabled and n.watchdog_interval == pytest.approx(0.1)
    n.ready("watching cam0")
    assert sock.recv(4096) == b"READY=1\nSTATUS=watching cam0"
    n.frame_processed()
    assert sock.recv(4096) == b"WATCHDOG=1"
    n.frame_processed()  # within the interval: rate-limited, nothing sent
    sock.settimeout(0.05)
    with pytest.raises(socket.timeout):
        sock.recv(4096)
    n.stopping()
    sock.settimeout(2)
    assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_socket() -> None:
    name = f"lfr-edge-test-{id(object())}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    Notifier("@" + name).ready()
    assert s.recv(64) == b"READY=1"


def test_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    n.ready()
    n.frame_processed()
