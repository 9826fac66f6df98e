"""The README's demo runs the real path end to end; the back office receives exactly the enrolled person,
and the review console it then serves holds that alert for a demo supervisor."""

from __future__ import annotations

import http.client
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.lab.localbroker import mosquitto_available


def _console_shows_the_alert(url: str, password: str) -> str:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/login")
    resp = conn.getresponse()
    page = resp.read().decode()
    cookie = next(v.split(";", 1)[0] for k, v in resp.getheaders() if k.lower() == "set-cookie")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    conn.request("POST", "/login", body=f"csrf={csrf.group(1)}&username=demo&password={password}",
                 headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    resp = conn.getresponse()
    resp.read()
    session = next(v.split(";", 1)[0] for k, v in resp.getheaders() if k.lower() == "set-cookie" and "lfr_session" in v)
    assert resp.status == 303
    conn.request("GET", "/alerts", headers={"Cookie": session})
    return conn.getresponse().read().decode()


@pytest.mark.skipif(not mosquitto_available(), reason="Debian mosquitto not installed (./setup.sh --dev installs it)")
def test_demo_delivers_one_verified_alert_for_the_enrolled_face(tmp_path: Path) -> None:
    pytest.importorskip("skimage", reason="scikit-image (test extra) ships the demo's public-domain face")
    console = True
    try:
        import sqlalchemy  # noqa: F401
    except ModuleNotFoundError:
        console = False
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "demo", "--out", str(tmp_path / "demo"), *([] if console else ["--no-console"])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 300
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "review console:" in line or time.monotonic() > deadline:
                break
        out = "\n".join(lines)
        alerts = [ln for ln in lines if ln.startswith("ALERT ")]
        assert len(alerts) == 1, out
        assert "subject=eileen_collins" in alerts[0]
        crop = re.search(r"face=(\S+\.jpg)", alerts[0])
        assert crop and Path(crop.group(1)).read_bytes()[:2] == b"\xff\xd8"  # the sealed crop arrived and opened
        assert "audit log: INTACT" in out
        assert re.search(r"alerts raised\s+1\b", out)
        assert re.search(r"frames processed\s+90\b", out)
        if console:
            m = re.search(r"review console: (http://127\.0\.0\.1:\d+/)\s+\(user demo, password (\S+)\)", lines[-1])
            assert m, out
            assert "eileen_collins" in _console_shows_the_alert(m.group(1), m.group(2))
            proc.send_signal(signal.SIGINT)  # Ctrl-C ends the demo and its console
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    shutil.rmtree(tmp_path / "demo", ignore_errors=True)
