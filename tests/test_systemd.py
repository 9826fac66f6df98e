"""The service unit verifies, is hardened to an exposure score ≤ 2.5, and egress is the brokers only."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.core.config import parse_config
from edge.device.provision import egress_dropin

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "lfr-edge.service"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian package systemd)"
)


def _unit_with_real_binary(tmp_path: Path) -> Path:
    # verify checks that ExecStart binaries exist; point them at this checkout's entry point.
    exe = Path(sys.executable).parent / "lfr-edge"
    assert exe.exists(), "package not installed in this venv (./setup.sh --dev)"
    unit = tmp_path / "lfr-edge.service"
    unit.write_text(UNIT.read_text().replace("/opt/lfr-edge/venv/bin/lfr-edge", str(exe)))
    return unit


def test_unit_verifies(tmp_path: Path) -> None:
    unit = _unit_with_real_binary(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in r.stderr.splitlines() if "lfr-edge.service" in ln]
    assert r.returncode == 0 and not problems, r.stderr


def test_exposure_score_at_most_2_5(tmp_path: Path) -> None:
    unit = _unit_with_real_binary(tmp_path)
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.5


def test_unit_declares_the_required_hardening() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
        "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectControlGroups=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service", "ReadWritePaths=/var/lib/lfr-edge", "IPAddressDeny=any",
        "Restart=on-failure", "User=lfr-edge", "RestartPreventExitStatus=2",
    ):
        assert line in text, line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    assert re.search(r"^MemoryMax=\d+", text, re.M)
    assert re.search(r"^DeviceAllow=char-video4linux", text, re.M)


def test_egress_dropin_allows_only_the_brokers(tmp_path: Path) -> None:
    cfg = parse_config({"mqtt": {"brokers": ["mqtts://127.0.0.7:8883", "mqtt://[::1]:1883"]}}, tmp_path)
    text = egress_dropin(cfg)
    assert "IPAddressAllow=localhost 127.0.0.7 ::1\n" in text
