"""`watchlist publish` confirms: it refuses to retain an older bundle over a newer one, and with --wait
reports what each running device installed or refused (real Mosquitto, real `lfr-edge run`)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from edge.core.watchlist.bundle import peek_version
from tests.alertkit import lfr_edge, make_backoffice_keys, make_device, secret
from tests.broker import DEVICE_USERS, BrokerFactory, broker_factory  # noqa: F401
from tests.camkit import Watcher, bundle_for, noise_video, set_config


def test_publish_refuses_a_stale_version_and_waits_for_each_device_to_install_or_refuse(
    tmp_path: Path, broker_factory: BrokerFactory  # noqa: F811
) -> None:
    broker = broker_factory(tls=True, users=DEVICE_USERS)
    bo = make_backoffice_keys(tmp_path)
    dev = make_device(tmp_path, broker, "dev-a", DEVICE_USERS["dev-a"], status_interval_s=30)
    video = noise_video(tmp_path / "empty.mp4")
    set_config(
        dev,
        camera={"source": f"file:{video}", "realtime": True, "loop": True, "width": 320, "height": 240},
        watchlist={"trusted_signers": [str(bo / "backoffice_ed25519.pub.pem")]},
    )
    bundles = {}
    for v in (1, 5, 6):
        bundles[v] = tmp_path / f"wl-{v}.lfrw"
        bundles[v].write_bytes(bundle_for(dev, bo, v))
    pw = secret(tmp_path / "bo.pw", DEVICE_USERS["backoffice"])
    conn = ["--broker", broker.uri, "--ca", str(broker.ca_file), "--username", "backoffice", "--password-file", str(pw)]

    def publish(v: int, *extra: str) -> tuple[int, str, str]:
        p = lfr_edge("watchlist", "publish", str(bundles[v]), *conn, *extra)
        out, err = p.communicate(timeout=300)
        return p.returncode, out, err

    watch = Watcher(broker, "backoffice", DEVICE_USERS["backoffice"], "lfr/dev-a/availability", "lfr/dev-a/watchlist")
    run = lfr_edge("run", "--config", str(dev.config))
    try:
        assert watch.wait(lambda: any(m.payload == b"online" for m in watch.on("lfr/dev-a/availability")), 120)
        # Installed: the device's own status says so, well before its 30 s heartbeat.
        rc, out, err = publish(5, "--device", "dev-a", "--wait", "120", "--json")
        assert rc == 0, err
        doc = json.loads(out)
        assert doc["version"] == 5 and doc["devices"] == [
            {"device": "dev-a", "topic": "lfr/dev-a/watchlist", "result": "installed", "version": 5}
        ]

        # Older than what the topic holds: refused before anything is published, one line, exit 2.
        rc, out, err = publish(1, "--device", "dev-a", "--wait")
        assert rc == 2 and out == ""
        assert err.strip().splitlines()[-1].endswith(
            "version 1 is not newer than version 5 retained for dev-a; use --force to publish it anyway"
        ), err
        assert watch.wait(lambda: bool(watch.on("lfr/dev-a/watchlist")), 10)
        assert peek_version(watch.on("lfr/dev-a/watchlist")[-1].payload) == 5

        # Forced: published, and the device's refusal (a rollback) is reported, exit 3.
        rc, out, err = publish(1, "--device", "dev-a", "--force", "--wait", "120")
        assert rc == 3, (out, err)
        assert out.startswith("dev-a: refused (rollback"), out

        # A newer one over the forced stale one installs again.
        rc, out, err = publish(6, "--device", "dev-a", "--wait", "120")
        assert (rc, out.strip()) == (0, "dev-a: installed version 6"), err
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            _, run_err = run.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            _, run_err = run.communicate()
        watch.close()
    assert run.returncode == 0, run_err[-2000:]

    # A device that is not running: published (retained for when it comes), but not confirmed: exit 1.
    rc, out, err = publish(6, "--device", "dev-b", "--wait", "3", "--json")
    assert rc == 1, err
    assert json.loads(out)["devices"][0]["result"] == "timeout"
