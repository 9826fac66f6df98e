"""First-boot provisioning from the boot partition: validated, moved with safe permissions, or refused."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path


def provision(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "provision", "--config", str(tmp_path / "etc" / "lfr-edge.yaml"),
         "--boot-dir", str(tmp_path / "boot")],
        capture_output=True, text=True, timeout=60,
    )


def test_good_boot_config_is_moved_into_place(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    src = tmp_path / "boot" / "lfr-edge.yaml"
    src.write_text("device:\n  id: van-07\n")
    r = provision(tmp_path)
    assert r.returncode == 0, r.stderr
    target = tmp_path / "etc" / "lfr-edge.yaml"
    assert target.read_text() == "device:\n  id: van-07\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert not src.exists()
    assert "provisioned configuration from boot partition" in r.stderr  # recorded in the log (stderr)
    assert provision(tmp_path).returncode == 0  # idempotent: next boot uses /etc


def test_bad_boot_config_is_reported_and_left(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    src = tmp_path / "boot" / "lfr-edge.yaml"
    src.write_text("device:\n  id: van 07\n  colour: red\n")
    r = provision(tmp_path)
    assert r.returncode == 2  # RestartPreventExitStatus=2: the service stays stopped
    assert "device.colour: unknown key" in r.stderr and "device.id" in r.stderr
    assert src.exists() and not (tmp_path / "etc" / "lfr-edge.yaml").exists()


def test_no_config_anywhere_exits_2(tmp_path: Path) -> None:
    r = provision(tmp_path)
    assert r.returncode == 2 and "no configuration" in r.stderr
