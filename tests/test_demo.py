"""The README's demo runs the real path end to end and the back office receives exactly the enrolled person."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.alerts.testbroker import mosquitto_available


@pytest.mark.skipif(not mosquitto_available(), reason="Debian mosquitto not installed (./setup.sh --dev installs it)")
def test_demo_delivers_one_verified_alert_for_the_enrolled_face(tmp_path: Path) -> None:
    pytest.importorskip("skimage", reason="scikit-image (test extra) ships the demo's public-domain face")
    r = subprocess.run(
        [sys.executable, "-m", "edge", "demo", "--out", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    alerts = [ln for ln in r.stdout.splitlines() if ln.startswith("ALERT ")]
    assert len(alerts) == 1, r.stdout
    assert "subject=eileen_collins" in alerts[0]
    crop = re.search(r"face=(\S+\.jpg)", alerts[0])
    assert crop and Path(crop.group(1)).read_bytes()[:2] == b"\xff\xd8"  # the sealed crop arrived and opened
    assert "audit log: INTACT" in r.stdout
    assert re.search(r"alerts raised\s+1\b", r.stdout)
    assert re.search(r"frames processed\s+90\b", r.stdout)
    shutil.rmtree(tmp_path / "demo", ignore_errors=True)
