"""The plain retained availability topic (online / offline by Will / offline at a clean stop) and Home
Assistant discovery with device health only, against a real Mosquitto with TLS and the example ACL."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from tests.alertkit import lfr_edge, make_backoffice_keys, make_device
from tests.broker import DEVICE_USERS, BrokerFactory, broker_factory  # noqa: F401
from tests.camkit import Watcher, bundle_for, noise_video, set_config

HA = ("homeassistant", "pw-ha")
AVAIL = "lfr/dev-a/availability"
SECRET_SUBJECT = "subject-kept-from-dashboards"


def _retained(broker: object, *filters: str, n: int = 1) -> list[tuple[str, bytes, bool]]:
    """What a dashboard connecting now is told: the retained messages on the filters."""
    w = Watcher(broker, *HA, *filters)  # type: ignore[arg-type]
    try:
        w.wait(lambda: len(w.messages) >= n, 10)
        return [(m.topic, m.payload, m.retain) for m in w.messages]
    finally:
        w.close()


def _stop(run: subprocess.Popen[str], sig: int) -> str:
    run.send_signal(sig)
    try:
        return run.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        run.kill()
        return run.communicate()[1]


def test_availability_is_retained_online_and_offline_by_will_and_by_clean_stop(
    tmp_path: Path, broker_factory: BrokerFactory  # noqa: F811
) -> None:
    broker = broker_factory(tls=True, users={**DEVICE_USERS, HA[0]: HA[1]})
    bo = make_backoffice_keys(tmp_path)
    dev = make_device(tmp_path, broker, "dev-a", DEVICE_USERS["dev-a"], status_interval_s=0.5)
    video = noise_video(tmp_path / "empty.mp4")
    set_config(
        dev,
        camera={"source": f"file:{video}", "realtime": True, "loop": True, "width": 320, "height": 240},
        # At rest, so that the list can be installed before the service starts.
        watchlist={"trusted_signers": [str(bo / "backoffice_ed25519.pub.pem")], "at_rest": True},
        mqtt={"home_assistant": {"enabled": True}},
    )
    (tmp_path / "wl.lfrw").write_bytes(bundle_for(dev, bo, 3, (SECRET_SUBJECT,)))
    install = lfr_edge("watchlist", "install", str(tmp_path / "wl.lfrw"), "--config", str(dev.config))
    assert install.wait(120) == 0, install.communicate()[1]

    live = Watcher(broker, *HA, AVAIL, "lfr/dev-a/status")
    run = lfr_edge("run", "--config", str(dev.config))
    try:
        assert live.wait(lambda: any(m.payload == b"online" for m in live.on(AVAIL)), 120), run.poll()
        # A dashboard that connects later is told at once: retained.
        assert _retained(broker, AVAIL) == [(AVAIL, b"online", True)]
        configs = _retained(broker, "homeassistant/#", n=4)
        # The status the sensors read carries a watchlist version, so the list is in force.
        assert live.wait(lambda: any(b'"watchlist_version":3' in m.payload for m in live.on("lfr/dev-a/status")), 60)
    finally:
        err = _stop(run, signal.SIGKILL)
    # SIGKILL: no goodbye, so the broker's Will says offline.
    assert _retained(broker, AVAIL) == [(AVAIL, b"offline", True)], err[-2000:]

    topics = {t for t, _, _ in configs}
    assert {f"homeassistant/sensor/dev-a/{o}/config" for o in ("fps", "alerts_pending", "watchlist_version",
                                                               "cpu_temperature")} <= topics  # fmt: skip
    for t, payload, retained in configs:
        assert retained, t
        doc = json.loads(payload)
        assert doc["state_topic"] == "lfr/dev-a/status" and doc["availability_topic"] == AVAIL
        assert doc["device"]["identifiers"] == ["lfr_edge_dev-a"]
        # Health only: no subject, face, crop or match in what Home Assistant is given.
        text = payload.decode().lower()
        for word in (SECRET_SUBJECT, "subject", "face", "crop", "match", "alerts.raised"):
            assert word not in text, (t, word)

    run = lfr_edge("run", "--config", str(dev.config))
    try:
        assert live.wait(lambda: live.on(AVAIL)[-1].payload == b"online", 120), run.poll()
    finally:
        err = _stop(run, signal.SIGTERM)
        live.close()
    assert run.returncode == 0, err[-2000:]
    assert _retained(broker, AVAIL) == [(AVAIL, b"offline", True)]


def test_each_camera_gets_its_own_fps_sensor_and_discovery_is_off_by_default() -> None:
    from edge.core.config import parse_config
    from edge.device.availability import discovery_messages, health_sensors

    cfg = parse_config({"device": {"id": "dev-a"},
                        "cameras": [{"name": "kerb", "source": "dir:/a"}, {"name": "rear", "source": "dir:/b"}]}, Path("/"))
    assert not cfg.mqtt.home_assistant.enabled
    ids = [s.object_id for s in health_sensors(cfg)]
    assert "fps_kerb" in ids and "fps_rear" in ids
    assert all(t.startswith("homeassistant/sensor/dev-a/") for t, _ in discovery_messages(cfg, "0"))
