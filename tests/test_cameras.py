"""Several cameras in one `lfr-edge run`: per-camera alerts and counters, config errors that name the entry,
and a watchdog that stops when one camera stalls."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import cv2
import pytest

from edge.core.config import parse_config
from edge.core.errors import ConfigError
from edge.device.cameras import AllProgressing
from tests.alertkit import lfr_edge, make_backoffice, make_backoffice_keys, make_device, start_listener
from tests.broker import DEVICE_USERS, BrokerFactory, broker_factory  # noqa: F401
from tests.camkit import noise_video, set_config


def _problems(doc: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config({"device": {"id": "v"}, **doc}, Path("/"))
    return e.value.problems


def test_cameras_config_errors_name_the_entry() -> None:
    lines = _problems({"cameras": [
        {"name": "front", "source": "file:/a.mp4"},
        {"name": "front", "source": "dir:/b", "detection": {"tiles": {"cols": 9}, "colour": 1}},
    ]})  # fmt: skip
    assert "cameras[1].name: 'front' is already the name of cameras[0]" in lines
    assert any(p.startswith("cameras[1].detection.tiles.cols: 9 is out of range") for p in lines), lines
    assert any(p.startswith("cameras[1].detection.colour: unknown key") for p in lines), lines
    assert any(p.startswith("cameras[0].source:") for p in _problems({"cameras": [{"name": "x", "source": "ftp://"}]}))
    assert any(p.startswith("cameras[0].name:") for p in _problems({"cameras": [{"source": "dir:/b"}]}))
    both = _problems({"camera": {"source": "dir:/a"}, "cameras": [{"name": "x", "source": "dir:/b"}]})
    assert any(p.startswith("camera: give either camera:") for p in both), both


def test_a_camera_inherits_the_detection_keys_it_does_not_set() -> None:
    cfg = parse_config({"device": {"id": "v"}, "detection": {"min_score": 0.7}, "cameras": [
        {"name": "front", "source": "dir:/a"},
        {"name": "side", "source": "dir:/b", "width": 1920, "height": 1080, "detection": {"tiles": {"cols": 5, "rows": 3}}},
    ]}, Path("/"))  # fmt: skip
    front, side = cfg.camera_specs()
    assert (front.name, side.name) == ("front", "side")
    assert (side.detection.tiles.cols, side.detection.tiles.rows, side.detection.min_score) == (5, 3, 0.7)
    assert front.detection == cfg.detection and side.camera.width == 1920
    assert cfg.for_camera(side).device.camera_name == "side"
    # The single form is one camera named device.camera_name.
    (one,) = parse_config({"device": {"id": "v", "camera_name": "rear"}}, Path("/")).camera_specs()
    assert one.name == "rear"


def test_the_watchdog_pings_only_while_every_camera_makes_progress() -> None:
    pings: list[int] = []
    gate = AllProgressing(["front", "side"], lambda: pings.append(1))
    for _ in range(5):
        gate.progressed("front")  # side is stalled: no ping however fast front runs
    assert pings == []
    gate.progressed("side")
    assert len(pings) == 1
    gate.progressed("side")
    gate.progressed("side")
    assert len(pings) == 1  # front has not moved since
    gate.ended("front")  # its replay ended: it no longer holds the others back
    gate.progressed("side")
    assert len(pings) == 2


def test_two_replay_cameras_in_one_run_alert_under_their_own_names_and_count_apart(
    tmp_path: Path, broker_factory: BrokerFactory  # noqa: F811
) -> None:
    pytest.importorskip("skimage", reason="scikit-image (test extra) ships the demo video's images")
    from edge.lab.demo import _skimage_data, make_video

    broker = broker_factory(tls=True, users=DEVICE_USERS)
    bo = make_backoffice_keys(tmp_path)
    dev = make_device(tmp_path, broker, "dev-a", DEVICE_USERS["dev-a"], seal_to=bo / "backoffice_x25519.pub.pem",
                      status_interval_s=0.5)  # fmt: skip
    bo_cfg = make_backoffice(tmp_path, broker, {"dev-a": dev.public_key}, DEVICE_USERS["backoffice"])
    custody = tmp_path / "custody" / "eileen_collins"
    custody.mkdir(parents=True)
    cv2.imwrite(str(custody / "a.png"), cv2.cvtColor(_skimage_data()[0], cv2.COLOR_RGB2BGR))
    bundle = tmp_path / "wl.lfrw"
    build = lfr_edge("watchlist", "build", "--faces", str(custody.parent), "--sign", str(bo),
                     "--to", str(dev.dir / "keys" / "device_x25519.pub.pem"), "--expires", "2099-01-01T00:00:00Z",
                     "--version", "1", "--out", str(bundle))  # fmt: skip
    assert build.wait(300) == 0, build.communicate()[1]
    street = tmp_path / "street.mp4"
    make_video(street, frames=30)
    empty = noise_video(tmp_path / "empty.mp4")
    set_config(
        dev,
        # At rest, so that the list can be installed before the service starts.
        watchlist={"trusted_signers": [str(bo / "backoffice_ed25519.pub.pem")], "at_rest": True},
        cameras=[
            {"name": "kerb", "source": f"file:{street}", "realtime": True, "loop": True},
            {"name": "rear", "source": f"file:{empty}", "width": 320, "height": 240, "realtime": True, "loop": True},
        ],
    )
    install = lfr_edge("watchlist", "install", str(bundle), "--config", str(dev.config))
    assert install.wait(120) == 0, install.communicate()[1]
    listener, got = start_listener(bo_cfg, broker)
    run = lfr_edge("run", "--config", str(dev.config))
    seen: list[dict[str, Any]] = []
    try:

        def both_counted() -> bool:
            for _, s in reversed(got.statuses):
                cams = {c["camera"]: c for c in s.get("cameras", [])}
                if s.get("state") == "online" and all(cams.get(n, {}).get("frames", 0) > 0 for n in ("kerb", "rear")):
                    seen.append(s)
                    return bool(got.alerts) and s["alerts"]["raised"] > 0
            return False

        assert got.wait(both_counted, 240), ([s.get("cameras") for _, s in got.statuses[-1:]], run.poll())
        assert run.poll() is None
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            _, err = run.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            _, err = run.communicate()
        listener.stop()
    assert run.returncode == 0, err[-2000:]
    # Every alert names the camera that saw the face; the empty street raised none.
    assert {a.camera for a in got.alerts} == {"kerb"}
    assert all(a.body and a.body["subject_id"] == "eileen_collins" for a in got.alerts)
    status = seen[-1]  # online, both cameras counting, an alert raised
    cams = {c["camera"]: c for c in status["cameras"]}
    assert cams["kerb"]["matches"] >= 1 and cams["rear"]["matches"] == 0
    assert cams["kerb"]["faces_seen"] > 0 and cams["rear"]["faces_seen"] == 0
    assert status["frames"] == cams["kerb"]["frames"] + cams["rear"]["frames"]
    assert [c["state"] for c in status["cameras"]] == ["running", "running"]


def test_a_second_source_on_the_command_line_is_refused_for_several_cameras(tmp_path: Path) -> None:
    stop = threading.Event()
    from edge.core.errors import InputError
    from edge.core.keys import generate_device_keys
    from edge.device.service import serve

    generate_device_keys(tmp_path / "keys")
    cfg = parse_config({"device": {"id": "v", "data_dir": str(tmp_path / "d"), "keys_dir": str(tmp_path / "keys")},
                        "cameras": [{"name": "a", "source": "dir:/a"}, {"name": "b", "source": "dir:/b"}],
                        "alerts": {"allow_unsealed": True, "allow_unsealed_reason": "no alert is raised here"}},
                       tmp_path)
    with pytest.raises(InputError, match="this config has 2 cameras"):
        serve(cfg, "dir:/c", stop=stop)


def test_bench_pipeline_runs_two_sources_together_and_reports_each(tmp_path: Path) -> None:
    import json

    a, b = noise_video(tmp_path / "a.mp4", frames=6), noise_video(tmp_path / "b.mp4", frames=4)
    for mode in ("per-camera", "shared"):
        p = lfr_edge("bench", "pipeline", "--source", str(a), "--source", str(b), "--interpreters", mode, "--json")
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        multi = json.loads(out)["multi"]
        assert [(c["camera"], c["frames"]) for c in multi["cameras"]] == [("cam0", 6), ("cam1", 4)]
        assert all(c["fps"] > 0 for c in multi["cameras"]) and "load_avg_1m" in multi
