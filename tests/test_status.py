"""The retained status heartbeat carries what an operator needs, counts only, and the threshold override."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from edge.core.config import parse_config
from edge.core.keys import generate_device_keys
from edge.core.types import U8, Rejection
from edge.device.camera.base import FrameSource
from edge.device.service import serve
from tests.broker import BrokerFactory, broker_factory  # noqa: F401
from tests.mqtt_collect import Collector


class StillCamera(FrameSource):
    """A live camera looking at an empty street (noise), 30 fps, until stopped."""

    live = True
    name = "still"

    def __init__(self) -> None:
        super().__init__()
        self.image = np.random.default_rng(3).integers(0, 255, (360, 640, 3), dtype=np.uint8)

    def open(self) -> None:
        pass

    def _grab(self) -> U8 | None:
        time.sleep(1 / 30)
        return self.image.copy()

    def close(self) -> None:
        pass


def test_status_heartbeat_fields_and_below_floor_override(
    tmp_path: Path, broker_factory: BrokerFactory  # noqa: F811
) -> None:
    broker = broker_factory(tls=False, users=None)
    generate_device_keys(tmp_path / "keys")
    cfg = parse_config(
        {
            "device": {"id": "van-9", "data_dir": str(tmp_path / "data"), "keys_dir": str(tmp_path / "keys")},
            "camera": {"source": "picamera2"},
            "mqtt": {"brokers": [broker.uri], "status_interval_s": 0.5},
            "matching": {"threshold": 0.93, "allow_below_floor": True, "below_floor_reason": "missing child, DCI approval 42"},
            "alerts": {"allow_unsealed": True, "allow_unsealed_reason": "test rig: no back-office sealing key"},
        },
        tmp_path,
    )  # fmt: skip
    stop = threading.Event()
    with Collector(broker, "lfr/van-9/status") as got:
        t = threading.Thread(target=serve, args=(cfg, StillCamera()), kwargs={"stop": stop})
        t.start()
        try:
            deadline = time.monotonic() + 60
            status: dict[str, object] = {}
            while time.monotonic() < deadline:
                online = [json.loads(m.payload) for m in got.on() if b'"online"' in m.payload]
                if online and int(online[-1].get("frames", 0)) > 0:  # type: ignore[call-overload]
                    status = online[-1]
                    break
                time.sleep(0.1)
        finally:
            stop.set()
            t.join(15)
        assert not t.is_alive()
    # The status is retained: a back office connecting later is told the last state (offline now).
    with Collector(broker, "lfr/van-9/status") as later:
        last = later.wait_for(1, 10)
        assert last and last[0].retain and json.loads(last[0].payload)["state"] == "offline"
    assert status, "no online status with processed frames"
    for key in ("uptime_s", "fps", "frames_dropped", "faces_seen", "rejections", "alerts", "models", "runtime",
                "cpu_temp_c", "watchlist", "watchlist_detail"):  # fmt: skip
        assert key in status, key
    assert status["rejections"] == {r.value: 0 for r in Rejection}
    assert status["watchlist"] == "none installed"
    alerts = status["alerts"]
    assert isinstance(alerts, dict) and alerts["raised"] == 0 and alerts["pending"] == 0
    m = status["matching"]
    assert isinstance(m, dict)
    assert (m["threshold"], m["units"], m["operating_point"]) == (0.93, "snorm", "explicit")
    assert m["below_floor"] == {"threshold": 0.93} and m["below_floor_reason"] == "missing child, DCI approval 42"
    # What the override costs, stated where the operator sees it (no list installed: the reference list).
    assert m["expected_false_alerts_per_10k_faces"] > 1.0 and m["expected_for_list_size"] == 500
