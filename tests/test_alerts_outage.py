"""Nothing lost: a broker outage mid-stream, a SIGKILLed device, and a device that never listens."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.core.config import load_config
from edge.device.publisher import SPOOL_FILE, AlertPublisher
from tests.alertkit import event, lfr_edge, make_backoffice, make_backoffice_keys, make_device, start_listener
from tests.broker import DEVICE_USERS, BrokerFactory, broker_factory  # noqa: F401

OUTAGE_S = 10.0
DEVICE_WITH_LISTEN_TRAP = """
import socket, sys
_listen = socket.socket.listen
def listen(self, *args):
    sys.stderr.write(f"LISTEN {self!r}\\n")
    return _listen(self, *args)
socket.socket.listen = listen
from edge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def world(tmp: Path, factory: BrokerFactory, start: bool = True) -> dict[str, Any]:
    broker = factory(tls=True, users=DEVICE_USERS, start=start)
    bo = make_backoffice_keys(tmp)
    a = make_device(tmp, broker, "dev-a", DEVICE_USERS["dev-a"], seal_to=bo / "backoffice_x25519.pub.pem")
    bo_cfg = make_backoffice(tmp, broker, {"dev-a": a.public_key}, DEVICE_USERS["backoffice"])
    return {"broker": broker, "a": a, "bo": bo_cfg}


def subjects(alerts: list[Any]) -> list[str]:
    return [a.body["subject_id"] for a in alerts]


def test_broker_killed_for_10s_mid_stream_loses_nothing_and_keeps_order(
    tmp_path: Path, broker_factory: BrokerFactory  # noqa: F811
) -> None:
    w = world(tmp_path, broker_factory)
    broker = w["broker"]
    listener, got = start_listener(w["bo"], w["broker"])
    pub = AlertPublisher.from_config(load_config(w["a"].config)).start()
    assert pub.link.wait_connected(10)
    restarted = threading.Event()

    def outage() -> None:
        broker.kill()  # SIGKILL: no goodbye to anyone
        time.sleep(OUTAGE_S)
        broker.start()
        restarted.set()

    try:
        for i in range(200):
            if i == 80:
                threading.Thread(target=outage, daemon=True).start()
            pub.on_match(event(i))
            time.sleep(0.02)
        assert restarted.wait(OUTAGE_S + 15)
        assert got.wait(lambda: len(got.alerts) >= 200, 60), f"{len(got.alerts)} of 200"
        assert pub.flush(20)
    finally:
        pub.stop()
        listener.stop()
    assert subjects(got.alerts) == [f"S-{i:04d}" for i in range(200)]
    assert len({a.alert_id for a in got.alerts}) == 200
    assert pub.link.stats.disconnects >= 1 and listener.link.stats.disconnects >= 1
    assert got.rejects == []


def spooled(device_dir: Path) -> int:
    db = device_dir / "data" / SPOOL_FILE
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM spool").fetchone()[0])
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0  # schema not created yet


def test_device_sigkilled_with_alerts_in_the_spool_delivers_them_all_after_restart(
    tmp_path: Path, broker_factory: BrokerFactory  # noqa: F811
) -> None:
    w = world(tmp_path, broker_factory, start=False)  # the broker is down while the device raises alerts
    dev = lfr_edge("alerts", "test", "--config", str(w["a"].config), "--count", "20", "--wait", "120")
    try:
        deadline = time.monotonic() + 30
        while spooled(w["a"].dir) < 20 and time.monotonic() < deadline and dev.poll() is None:
            time.sleep(0.1)
        assert spooled(w["a"].dir) == 20
        dev.send_signal(signal.SIGKILL)
        dev.wait(10)
    finally:
        if dev.poll() is None:
            dev.kill()
    state = lfr_edge("alerts", "spool", "--config", str(w["a"].config), "--json")
    out, err = state.communicate(timeout=30)
    assert state.returncode == 0, err
    assert json.loads(out)["pending"] == 20  # what an operator sees before the link comes back
    w["broker"].start()
    listener, got = start_listener(w["bo"], w["broker"])
    try:
        again = lfr_edge("alerts", "test", "--config", str(w["a"].config), "--count", "0", "--wait", "30")
        out, err = again.communicate(timeout=60)
        assert again.returncode == 0, err
        assert "20 alert(s) acknowledged by the back office" in out
        assert got.wait(lambda: len(got.alerts) >= 20, 20)
    finally:
        listener.stop()
    assert [a.body["subject_id"] for a in got.alerts] == [f"TEST-{i:06d}" for i in range(20)]
    assert spooled(w["a"].dir) == 0


# --------------------------------------------------------------------------- only MQTT


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).startswith("socket:["):
            inodes.add(str(target)[8:-1])
    return inodes


def _inet_sockets(inodes: set[str]) -> list[tuple[str, str, int, str]]:
    """(table, state hex, remote port, local address) for each of the process's IP sockets."""
    out = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes:
                out.append((table, f[3], int(f[2].rsplit(":", 1)[1], 16), f[1]))
    return out


def test_the_device_opens_no_listening_socket_and_talks_only_to_its_broker(
    tmp_path: Path, broker_factory: BrokerFactory  # noqa: F811
) -> None:
    w = world(tmp_path, broker_factory)
    listener, got = start_listener(w["bo"], w["broker"])
    # A device process doing real work: connected, publishing status and an alert, then idling.
    # A trap on socket.listen() in it reports every listener, even one that lives for a microsecond
    # (which a /proc snapshot would miss).
    dev = subprocess.Popen(
        [sys.executable, "-c", DEVICE_WITH_LISTEN_TRAP, "alerts", "test", "--config", str(w["a"].config),
         "--count", "1", "--interval", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert got.wait(lambda: len(got.alerts) >= 1 and got.statuses != [], 30)
        sockets = _inet_sockets(_socket_inodes(dev.pid))
    finally:
        dev.send_signal(signal.SIGTERM)
        _, err = dev.communicate(timeout=10)
        listener.stop()
    assert "LISTEN" not in err, err
    tcp = [s for s in sockets if s[0].startswith("tcp")]
    assert tcp, "the device's broker connection should be visible (inode mapping works)"
    assert [s for s in sockets if s[0].startswith("tcp") and s[1] == "0A"] == []  # 0A = LISTEN
    assert [s for s in sockets if s[0].startswith("udp")] == []
    assert {s[2] for s in tcp} == {w["broker"].port}


def test_lfr_edge_run_opens_no_network_listener_and_talks_only_to_its_broker(
    tmp_path: Path, broker_factory: BrokerFactory  # noqa: F811
) -> None:
    pytest.importorskip("skimage", reason="scikit-image (test extra) ships the demo video's images")
    from edge.lab.demo import make_video

    w = world(tmp_path, broker_factory)
    video = tmp_path / "street.mp4"
    make_video(video, frames=30)
    cfg = yaml.safe_load(w["a"].config.read_text())
    cfg["camera"] = {"source": f"file:{video}", "loop": True, "realtime": True}
    w["a"].config.write_text(yaml.safe_dump(cfg))
    listener, got = start_listener(w["bo"], w["broker"])
    # The real service main job, with the same listen() trap.
    dev = subprocess.Popen(
        [sys.executable, "-c", DEVICE_WITH_LISTEN_TRAP, "run", "--config", str(w["a"].config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert got.wait(lambda: any(s.get("state") == "online" for _, s in got.statuses), 60)
        time.sleep(2.0)  # frames flowing, a status heartbeat or two
        sockets = _inet_sockets(_socket_inodes(dev.pid))
        assert dev.poll() is None, "lfr-edge run exited early"
    finally:
        dev.send_signal(signal.SIGTERM)
        _, err = dev.communicate(timeout=15)
        listener.stop()
    assert dev.returncode == 0, err
    # The one listener is the owner-only control socket in data_dir (a Unix socket: no network).
    control = w["a"].dir / "data" / "control.sock"
    listens = [line for line in err.splitlines() if line.startswith("LISTEN")]
    assert len(listens) == 1 and "family=1," in listens[0] and listens[0].endswith(f"laddr={control}>"), err
    tcp = [s for s in sockets if s[0].startswith("tcp")]
    assert tcp and [s for s in tcp if s[1] == "0A"] == []  # connected, and no LISTEN (0A)
    assert [s for s in sockets if s[0].startswith("udp")] == []
    assert {s[2] for s in tcp} == {w["broker"].port}
