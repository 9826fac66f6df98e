"""The device commands act on the RUNNING service: a wipe stops matching at once, an install starts it.

A real `lfr-edge run` (real models, real Mosquitto) watches a looping replay in which an enrolled
person walks through every loop. While it runs, `lfr-edge watchlist wipe --local` wipes the list; the
next loops raise no alert and `lfr-edge status --json` reports no list, without a restart. Then
`lfr-edge watchlist install` of a newer bundle makes the same process match again. With no service
running the commands fall back to the store and say so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.core.config import load_config
from edge.device.control import socket_path
from edge.lab.localbroker import BACKOFFICE_USER
from tests.alertkit import ROOT, Device, Received, make_backoffice, make_backoffice_keys, make_device, start_listener
from tests.broker import DEVICE_USERS, broker_factory, plain_broker, tls_broker  # noqa: F401  (pytest fixtures)

pytestmark = pytest.mark.slow

N_FRAMES = 40
ENROLLED = "Jimmy_Carter"
# One alert per person per visit: the cooldown off, so every loop's visit alerts (test_pipeline.py's settings otherwise).
MATCHING = {"threshold": 4.5, "min_margin": 0.5, "cooldown_s": 0.0}
FALLBACK = "no lfr-edge service is running"


def lfr(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


@pytest.fixture
def van(tmp_path: Path, tls_broker: Any, faces_dir: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    """A device whose camera loops over a clip in which the enrolled person is seen in the first
    40% of every loop (so every loop is a new visit, a new track), and two bundles of that person."""
    from tests.videogen import Person, enrolment_images, generate

    bo_keys = make_backoffice_keys(tmp_path)
    dev: Device = make_device(
        tmp_path, tls_broker, "dev-a", DEVICE_USERS["dev-a"], seal_to=bo_keys / "backoffice_x25519.pub.pem"
    )
    bo_config = make_backoffice(tmp_path, tls_broker, {"dev-a": dev.public_key}, DEVICE_USERS[BACKOFFICE_USER])
    last = int(N_FRAMES * 0.4)
    cast = [Person(ENROLLED, f"{ENROLLED}/{ENROLLED}_0001.jpg", True, 0, 170.0, 150.0, 0, last)]
    clip = tmp_path / "clip"
    generate(faces_dir, clip, 1280, 720, n_frames=N_FRAMES, fps=15.0, cast=cast, write_dir=False)
    cfg = yaml.safe_load(dev.config.read_text())
    cfg["camera"] = {"source": f"file:{clip / 'clip.mp4'}", "loop": True}
    cfg["matching"] = MATCHING
    # At rest, so that the commands' fallback with no service running (the store itself) is there to test.
    cfg["watchlist"] = {"trusted_signers": [str(bo_keys / "backoffice_ed25519.pub.pem")], "at_rest": True}
    cfg["logging"] = {"level": "INFO"}
    dev.config.write_text(yaml.safe_dump(cfg))
    custody = tmp_path / "custody" / ENROLLED
    custody.mkdir(parents=True)
    for img in enrolment_images(faces_dir / "lfw", ENROLLED, 2):
        shutil.copy(img, custody / img.name)
    bundles = []
    for version in (1, 2):
        out = tmp_path / f"v{version}.lfrw"
        r = lfr(
            "watchlist", "build", "--faces", str(custody.parent), "--sign", str(bo_keys),
            "--to", str(dev.dir / "keys" / "device_x25519.pub.pem"), "--expires", "2099-01-01T00:00:00Z",
            "--version", str(version), "--out", str(out), "--config", str(dev.config),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        bundles.append(out)
    yield {"device": dev, "bundles": bundles, "broker": tls_broker, "root": tmp_path, "bo_config": bo_config}


def test_wipe_and_install_act_on_the_running_service_without_a_restart(van: dict[str, Any]) -> None:
    dev: Device = van["device"]
    c = str(dev.config)
    sock = socket_path(load_config(dev.config))
    events_file = van["root"] / "events.jsonl"

    # No service yet: install acts on the store directly, and says so.
    r = lfr("watchlist", "install", str(van["bundles"][0]), "--config", c)
    assert r.returncode == 0 and FALLBACK in r.stderr, r.stderr
    assert "installed watchlist version 1: 1 subjects" in r.stdout

    listener, got = start_listener(van["bo_config"], van["broker"])
    try:
        run = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", c, "--events", str(events_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            _exercise(run, c, sock, events_file, van, got)
        finally:
            if run.poll() is None:
                run.send_signal(signal.SIGTERM)
            out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err[-3000:]
        assert json.loads(out)["stopped"] is True
    finally:
        listener.stop()
    assert not sock.exists()  # the service removes its socket when it stops


def _status(c: str) -> dict[str, Any]:
    r = lfr("status", "--config", c, "--json")
    assert r.returncode == 0, r.stderr
    assert FALLBACK not in r.stderr  # answered by the running service
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def _exercise(
    run: subprocess.Popen[str], c: str, sock: Path, events_file: Path, van: dict[str, Any], got: Received
) -> None:
    wait_until(lambda: run.poll() is not None or sock.exists(), 300, "the control socket")
    assert run.poll() is None, run.communicate()[1][-3000:]
    # Owner only: read and write for the service's user, nothing for anyone else.
    st = sock.lstat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()

    # Alerts arrive: in the local copy, and verified and unsealed at the back office.
    wait_until(lambda: len(events(events_file)) >= 2, 300, "two alerts (two visits)")
    assert {e["subject_id"] for e in events(events_file)} == {ENROLLED}
    assert got.wait(lambda: len(got.alerts) >= 1, 60), got.rejects
    before = _status(c)
    assert before["state"] == "online" and before["watchlist"] == "active" and before["watchlist_version"] == 1
    assert before["cameras"][0]["matches"] >= 2 and before["alerts"]["raised"] >= 2  # one owner each, both kept
    r = lfr("status", "--config", c)
    assert r.returncode == 0 and "service: online" in r.stdout and "watchlist: active, version 1" in r.stdout, r.stdout
    assert "camera cam0:" in r.stdout and ENROLLED not in r.stdout

    # The wipe: in force when the command returns.
    r = lfr("watchlist", "wipe", "--local", "--config", c, "--json")
    assert r.returncode == 0, r.stderr
    assert FALLBACK not in r.stderr
    assert json.loads(r.stdout) == {"local": True, "wiped": True, "service": True}
    n_alerts = len(events(events_file))
    after = _status(c)
    assert after["watchlist"] == "none installed" and after["watchlist_detail"] == {"state": "none"}
    assert "watchlist_version" not in after
    # The back office is told too, by the signed heartbeat made from the same typed status.
    assert got.wait(lambda: any(s.get("watchlist") == "none installed" for _, s in got.statuses), 90), got.statuses[-1:]
    # ... and on disk: the stored list and its key are gone.
    data = dev_data(van)
    assert not (data / "watchlist.enc").exists() and not (data / "watchlist.key").exists()
    # The next frames (three more full loops, each with a visit of the enrolled person) raise no alert.
    frames0 = after["frames"]
    wait_until(lambda: _status(c)["frames"] >= frames0 + 3 * N_FRAMES, 600, "three more loops")
    assert len(events(events_file)) == n_alerts
    r = lfr("watchlist", "status", "--config", c, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"state": "none"}, r.stderr

    # An install to the running service: matching again from the next visit, same process.
    r = lfr("watchlist", "install", str(van["bundles"][1]), "--config", c)
    assert r.returncode == 0 and FALLBACK not in r.stderr, r.stderr
    assert "installed watchlist version 2: 1 subjects" in r.stdout
    assert _status(c)["watchlist_version"] == 2
    wait_until(lambda: any(e["watchlist_version"] == 2 for e in events(events_file)), 300, "an alert from v2")
    assert run.poll() is None  # never restarted

    # A refused bundle (rollback to v1) is refused by the service, with the store's exit code and reason.
    r = lfr("watchlist", "install", str(van["bundles"][0]), "--config", c)
    assert r.returncode == 2 and "(rollback)" in r.stderr and FALLBACK not in r.stderr, r.stderr
    assert _status(c)["watchlist_version"] == 2

    # A device-wide wipe would leave the list in the service's memory: refused until it is stopped.
    r = lfr("wipe", "--all", "--no-publish", "--config", c)
    assert r.returncode == 1 and "service is running" in r.stderr, r.stderr
    assert (dev_data(van) / "watchlist.enc").exists() and _status(c)["watchlist_version"] == 2

    # A second service on the same device refuses to start rather than take over the socket.
    second = lfr("run", "--config", c, "--max-frames", "1", timeout=300)
    assert second.returncode == 1 and "already runs" in second.stderr, second.stderr[-2000:]
    assert run.poll() is None


def dev_data(van: dict[str, Any]) -> Path:
    return Path(van["device"].dir) / "data"


def test_commands_fall_back_to_the_store_when_no_service_runs(tmp_path: Path) -> None:
    """No service (no socket, or a socket left by a dead one): the commands act on the store and say so."""
    from edge.core.keys import generate_device_keys

    keys = tmp_path / "keys"
    generate_device_keys(keys)
    data = tmp_path / "data"
    cfg = tmp_path / "device.yaml"
    # At rest: the store the commands fall back to is on the card.
    doc = {"device": {"id": "van-1", "data_dir": str(data), "keys_dir": str(keys)}, "watchlist": {"at_rest": True}}
    cfg.write_text(yaml.safe_dump(doc))
    r = lfr("status", "--config", str(cfg), "--json")
    assert r.returncode == 0 and FALLBACK in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == "not running" and doc["watchlist"] == "none installed" and doc["device_id"] == "van-1"

    # A socket whose service died (bound, never listened to): connection refused → fall back.
    data.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(data / "control.sock"))
    stale.close()
    r = lfr("watchlist", "wipe", "--local", "--config", str(cfg), "--json")
    assert r.returncode == 0 and FALLBACK in r.stderr, r.stderr
    assert json.loads(r.stdout) == {"local": True, "wiped": False, "service": False}
    r = lfr("watchlist", "status", "--config", str(cfg))
    assert r.returncode == 0 and "no watchlist installed" in r.stdout and FALLBACK in r.stderr


def test_control_socket_is_owner_only_refuses_garbage_and_a_second_service(tmp_path: Path) -> None:
    """The channel itself, on a real socket: 0600, bad requests refused with exit 2, one service per socket."""
    from edge.core.errors import RuntimeFailure
    from edge.device.control import Command, ControlRequest, ControlResponse, ControlServer, ask

    seen: list[ControlRequest] = []

    def handler(req: ControlRequest) -> ControlResponse:
        seen.append(req)
        return ControlResponse(ok=True, wiped=req.command is Command.WIPE)

    path = tmp_path / "run" / "control.sock"
    server = ControlServer(path, handler, max_bytes=4096).start()
    try:
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600
        answer = ask(path, ControlRequest(Command.WIPE, "cli"))
        assert answer is not None and answer.ok and answer.wiped is True
        big = ask(path, ControlRequest(Command.INSTALL, "cli", b"\0" * 8192))
        assert big is not None and not big.ok and big.exit_code == 2 and "longer than" in (big.error or "")
        for garbage in (b"not json\n", b'{"v": 1, "command": "format-disk"}\n', b'{"v": 1, "command": "install"}\n'):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(path))
                s.sendall(garbage)
                reply = ControlResponse.decode(s.makefile("rb").readline())
            assert not reply.ok and reply.exit_code == 2, garbage
        assert [r.command for r in seen] == [Command.WIPE]  # nothing malformed reached the handler
        # Who asked, as the kernel tells it (the audit log records the source of every wipe and install).
        assert seen[0].source == f"cli (uid {os.getuid()}, pid {os.getpid()})"
        with pytest.raises(RuntimeFailure, match="already runs"):
            ControlServer(path, handler, max_bytes=4096).bind()
    finally:
        server.close()
    assert not path.exists() and ask(path, ControlRequest(Command.STATUS)) is None


def test_the_appliance_object_reports_typed_status_and_events(tmp_path: Path, plain_broker: Any) -> None:  # noqa: F811
    """In process: install and wipe through the typed surface while the loop runs; each change is a typed event."""
    import threading

    from edge.core.config import parse_config
    from edge.device.appliance import Appliance, ApplianceEvent, EventKind
    from edge.device.status import ServiceState, WatchlistState
    from tests.test_status import StillCamera
    from tests.watchlist_kit import device_models, make_kit

    kit = make_kit(tmp_path)
    cfg = parse_config(
        {
            "device": {"id": "van-3", "data_dir": str(tmp_path / "data"), "keys_dir": str(tmp_path / "device-keys")},
            "camera": {"source": "picamera2"},
            "mqtt": {"brokers": [plain_broker.uri]},
            "watchlist": {"trusted_signers": [str(tmp_path / "backoffice-keys" / "backoffice_ed25519.pub.pem")]},
            "alerts": {"seal_to": str(tmp_path / "backoffice-keys" / "backoffice_x25519.pub.pem")},
        },
        tmp_path,
    )
    bundle = kit.bundle(5, n_subjects=3, **device_models(cfg))[0]
    app = Appliance(cfg, StillCamera())
    seen: list[ApplianceEvent] = []
    app.subscribe(seen.append)
    assert app.status().state is ServiceState.STARTING and app.status().cameras == ()
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(app.run()))
    t.start()
    try:
        wait_until(lambda: app.status().state is ServiceState.ONLINE and app.status().cameras[0].frames > 0, 120, "frames")
        # The heartbeat says whether its times can be trusted (a Pi has no RTC).
        assert app.status().to_json()["clock"] in ("synchronised", "unsynchronised", "unknown")
        installed = app.install_watchlist(bundle, "test")
        assert installed.watchlist.state is WatchlistState.ACTIVE and installed.watchlist.subjects == 3
        st = app.status()
        assert st.watchlist is not None and st.watchlist.version == 5
        assert st.matching is not None and st.matching.expected_for_list_size == 3
        wiped = app.wipe("test")
        assert wiped.removed and wiped.wiped_version == 5 and wiped.watchlist.state is WatchlistState.NONE
        after = app.status()
        assert after.watchlist is not None and after.watchlist.state is WatchlistState.NONE
        assert not (tmp_path / "data" / "watchlist.enc").exists()
    finally:
        app.stop()
        t.join(60)
    assert not t.is_alive() and result[0].status.cameras[0].frames > 0
    assert [(e.kind, e.watchlist_version) for e in seen] == [
        (EventKind.STARTED, None),
        (EventKind.WATCHLIST_INSTALLED, 5),
        (EventKind.WATCHLIST_WIPED, 5),
        (EventKind.STOPPED, None),
    ]
    assert seen[1].source == "test"


def test_a_stored_list_that_no_longer_verifies_is_reported_unusable_by_the_running_service(
    tmp_path: Path, plain_broker: Any  # noqa: F811
) -> None:
    """The signer was removed from trusted_signers: the service runs, alerts nobody, and says why
    (`watchlist status` exits 3 as it does with no service), rather than "none installed"."""
    import threading

    from edge.device.appliance import Appliance
    from edge.device.status import ServiceState, WatchlistState
    from tests.test_status import StillCamera
    from tests.watchlist_kit import device_models, make_kit

    kit = make_kit(tmp_path)
    doc: dict[str, Any] = {
        "device": {"id": "van-4", "data_dir": str(tmp_path / "data"), "keys_dir": str(tmp_path / "device-keys")},
        "camera": {"source": "picamera2"},
        "mqtt": {"brokers": [plain_broker.uri]},
        # At rest: the list that stops verifying is the one stored on the card.
        "watchlist": {
            "trusted_signers": [str(tmp_path / "backoffice-keys" / "backoffice_ed25519.pub.pem")],
            "at_rest": True,
        },
        "alerts": {"seal_to": str(tmp_path / "backoffice-keys" / "backoffice_x25519.pub.pem")},
    }
    path = tmp_path / "device.yaml"
    path.write_text(yaml.safe_dump(doc))
    bundle = tmp_path / "v1.wl"
    bundle.write_bytes(kit.bundle(1, **device_models(load_config(path)))[0])
    assert lfr("watchlist", "install", str(bundle), "--config", str(path)).returncode == 0
    doc["watchlist"]["trusted_signers"] = [str(tmp_path / "other-device-keys" / "device_ed25519.pub.pem")]
    path.write_text(yaml.safe_dump(doc))

    app = Appliance(load_config(path), StillCamera())
    t = threading.Thread(target=app.run)
    t.start()
    try:
        wait_until(lambda: app.status().state is ServiceState.ONLINE, 120, "the service")
        wl = app.status().watchlist
        assert wl is not None and wl.state is WatchlistState.UNUSABLE and wl.verification_failed
        r = lfr("watchlist", "status", "--config", str(path), "--json")
        assert r.returncode == 3 and FALLBACK not in r.stderr, r.stderr
        assert json.loads(r.stdout)["state"] == "unusable" and "(unknown_signer)" in json.loads(r.stdout)["error"]
        r = lfr("status", "--config", str(path), "--json")
        assert r.returncode == 3 and json.loads(r.stdout)["watchlist"] == "unusable", r.stderr
    finally:
        app.stop()
        t.join(60)
    assert not t.is_alive()
