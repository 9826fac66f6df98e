"""The units verify, are hardened (exposure ≤ 2.5), and the generated egress drop-in is what systemd reads."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.core.config import parse_config
from edge.device.provision import egress_dropin, plan_egress

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
    text = egress_dropin(plan_egress(cfg, tmp_path / "no-resolv.conf", 0))
    assert "IPAddressAllow=localhost 127.0.0.7 ::1\n" in text


UNITS = ("lfr-edge.service", "lfr-edge-egress.service", "lfr-edge.path")


def _installed(tmp_path: Path, dropin: str | None = None) -> Path:
    """The three units as setup.sh installs them, pointed at this venv's entry point, plus the
    runtime drop-in where systemd would find it beside the unit."""
    exe = Path(sys.executable).parent / "lfr-edge"
    d = tmp_path / "units"
    d.mkdir()
    for name in UNITS:
        (d / name).write_text((ROOT / "systemd" / name).read_text().replace("/opt/lfr-edge/venv/bin/lfr-edge", str(exe)))
    if dropin is not None:
        (d / "lfr-edge.service.d").mkdir()
        (d / "lfr-edge.service.d" / "10-egress.conf").write_text(dropin)
    return d


def _security(unit: Path) -> tuple[float, str]:
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    return float(m.group(1)), r.stdout + r.stderr


def test_all_units_and_the_generated_dropin_verify(tmp_path: Path) -> None:
    cfg = parse_config({"mqtt": {"brokers": ["mqtts://10.20.30.40:8883", "mqtts://localhost:8883"]}}, tmp_path)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.168.1.1\n")
    d = _installed(tmp_path, egress_dropin(plan_egress(cfg, resolv, 0)))
    r = subprocess.run(["systemd-analyze", "verify", *(str(d / n) for n in UNITS)],
                       capture_output=True, text=True, timeout=60)
    problems = [ln for ln in r.stderr.splitlines() if "lfr-edge" in ln]
    assert r.returncode == 0 and not problems, r.stderr
    score, out = _security(d / "lfr-edge.service")
    assert score <= 2.5
    # systemd read the drop-in: every assignment parsed, and the allow-list now names real hosts.
    assert "ignoring" not in out, out
    assert re.search(r"IPAddressDeny=\s+Service defines IP address allow list with non-localhost entries", out), out


def test_without_the_dropin_the_service_reaches_loopback_only(tmp_path: Path) -> None:
    _, out = _security(_installed(tmp_path) / "lfr-edge.service")
    assert re.search(r"IPAddressDeny=\s+Service defines IP address allow list with only localhost entries", out), out


def test_egress_unit_runs_before_the_service_and_is_hardened(tmp_path: Path) -> None:
    d = _installed(tmp_path)
    svc = (d / "lfr-edge.service").read_text()
    egress = (d / "lfr-edge-egress.service").read_text()
    # Pulled in (Wants=) and ordered before on every start, so each start resolves afresh.
    assert re.search(r"^Wants=.*lfr-edge-egress\.service", svc, re.M)
    assert re.search(r"^After=.*lfr-edge-egress\.service", svc, re.M)
    assert re.search(r"^After=.*time-sync\.target", svc, re.M)
    assert "Before=lfr-edge.service" in egress and "Type=oneshot" in egress
    assert "--egress-dropin /run/systemd/system/lfr-edge.service.d/10-egress.conf --reload" in egress
    # No IPAddressDeny= there: it must reach the router's DNS, which the service itself may not.
    assert "IPAddressDeny" not in egress.split("[Service]")[1]
    score, _ = _security(d / "lfr-edge-egress.service")
    assert score <= 2.5  # a root oneshot, still narrowed


def test_path_unit_watches_etc_and_the_boot_partition() -> None:
    text = (ROOT / "systemd" / "lfr-edge.path").read_text()
    assert "PathExists=/etc/lfr-edge/lfr-edge.yaml" in text
    assert "PathModified=/boot/firmware/lfr-edge.yaml" in text
    assert "Unit=lfr-edge.service" in text and "WantedBy=multi-user.target" in text
