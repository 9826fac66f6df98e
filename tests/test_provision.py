"""First-boot provisioning from the boot partition: validated, moved with safe permissions, or refused."""

from __future__ import annotations

import json
import os
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


# --- Hostile files on the boot partition: refused with one line, exit 2, never installed -------------


def _refused(tmp_path: Path, fragment: str) -> None:
    r = provision(tmp_path)
    assert r.returncode == 2, r.stderr
    assert fragment in r.stderr, r.stderr
    assert not (tmp_path / "etc" / "lfr-edge.yaml").exists()


def test_symlink_on_boot_partition_is_refused_not_followed(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    secret = tmp_path / "secret"
    secret.write_text("root-password-hash: do not echo me\n")
    (tmp_path / "boot" / "lfr-edge.yaml").symlink_to(secret)
    r = provision(tmp_path)
    assert r.returncode == 2 and "symbolic link" in r.stderr
    assert "do not echo me" not in r.stderr  # the target was never read
    assert (tmp_path / "boot" / "lfr-edge.yaml").is_symlink()


def test_fifo_directory_and_oversize_on_boot_partition_are_refused(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    os.mkfifo(boot / "lfr-edge.yaml")  # would block a naive reader forever
    _refused(tmp_path, "not a regular file")
    (boot / "lfr-edge.yaml").unlink()
    (boot / "lfr-edge.yaml").mkdir()
    _refused(tmp_path, "is a directory")
    (boot / "lfr-edge.yaml").rmdir()
    (boot / "lfr-edge.yaml").write_text("device:\n  id: van-07\n" + "#" * 2_000_000 + "\n")
    _refused(tmp_path, "limit")


# --- The egress drop-in, end to end through the CLI --------------------------------------------------


def egress(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "provision", "--config", str(tmp_path / "etc" / "lfr-edge.yaml"),
         "--boot-dir", str(tmp_path / "boot"), "--egress-dropin", str(tmp_path / "run" / "10-egress.conf"),
         "--resolv-conf", str(tmp_path / "resolv.conf"), "--resolve-timeout", "0", "--json", *extra],
        capture_output=True, text=True, timeout=60,
    )


def _boot_config(tmp_path: Path, brokers: list[str]) -> None:
    (tmp_path / "boot").mkdir(exist_ok=True)
    lines = "".join(f"    - {b}\n" for b in brokers)
    (tmp_path / "boot" / "lfr-edge.yaml").write_text(f"device:\n  id: van-07\nmqtt:\n  brokers:\n{lines}")
    # A router's resolver, as Raspberry Pi OS's resolv.conf has it, and a loopback stub.
    (tmp_path / "resolv.conf").write_text("# from DHCP\nnameserver 192.168.1.1\nnameserver 127.0.0.53\nsearch lan\n")


def _allow_line(tmp_path: Path) -> str:
    text = (tmp_path / "run" / "10-egress.conf").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("IPAddressAllow=")]
    assert lines[0] == "IPAddressAllow=", text  # resets the unit's list: the file states all of it
    return lines[-1]


def test_boot_config_with_broker_address_gives_a_dropin_without_dns(tmp_path: Path) -> None:
    _boot_config(tmp_path, ["mqtts://10.20.30.40:8883"])
    r = egress(tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "etc" / "lfr-edge.yaml").exists()  # provisioned first, then the drop-in
    assert _allow_line(tmp_path) == "IPAddressAllow=localhost 10.20.30.40"  # an address needs no resolver
    out = json.loads(r.stdout)
    assert out["changed"] is True and out["resolvers"] == []


def test_broker_host_name_is_resolved_now_and_the_resolvers_are_allowed(tmp_path: Path) -> None:
    _boot_config(tmp_path, ["mqtts://localhost:8883"])
    r = egress(tmp_path)
    assert r.returncode == 0, r.stderr
    allow = _allow_line(tmp_path).removeprefix("IPAddressAllow=").split()
    assert "127.0.0.1" in allow  # what the name resolved to at this start
    assert "192.168.1.1" in allow  # the router's DNS: the MQTT client resolves again on reconnect
    assert "127.0.0.53" not in allow  # a loopback stub is already inside `localhost`
    assert "Host names resolved at this start: localhost" in (tmp_path / "run" / "10-egress.conf").read_text()


def test_dropin_is_refreshed_when_the_broker_address_changes(tmp_path: Path) -> None:
    _boot_config(tmp_path, ["mqtts://10.20.30.40:8883"])
    assert egress(tmp_path).returncode == 0
    again = egress(tmp_path)
    assert json.loads(again.stdout)["changed"] is False  # same config: no rewrite, no daemon-reload
    cfg = tmp_path / "etc" / "lfr-edge.yaml"
    cfg.write_text(cfg.read_text().replace("10.20.30.40", "10.20.30.41"))
    moved = egress(tmp_path)
    assert moved.returncode == 0 and json.loads(moved.stdout)["changed"] is True
    assert _allow_line(tmp_path) == "IPAddressAllow=localhost 10.20.30.41"  # the old address is gone


def test_unresolvable_broker_keeps_the_previous_dropin_and_exits_1(tmp_path: Path) -> None:
    _boot_config(tmp_path, ["mqtts://10.20.30.40:8883"])
    assert egress(tmp_path).returncode == 0
    before = (tmp_path / "run" / "10-egress.conf").read_text()
    cfg = tmp_path / "etc" / "lfr-edge.yaml"
    cfg.write_text(cfg.read_text().replace("10.20.30.40", "broker.invalid"))  # RFC 6761: never resolves
    r = egress(tmp_path)
    assert r.returncode == 1  # a runtime failure (network), not a bad config
    assert "cannot resolve 'broker.invalid'" in r.stderr
    assert (tmp_path / "run" / "10-egress.conf").read_text() == before


def test_bad_boot_config_writes_no_dropin(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "lfr-edge.yaml").write_text("device:\n  id: van-07\nmqtt:\n  brokers: [ftp://x]\n")
    r = egress(tmp_path)
    assert r.returncode == 2 and "mqtt.brokers" in r.stderr
    assert not (tmp_path / "run" / "10-egress.conf").exists()


def test_a_name_that_moves_between_starts_is_followed() -> None:
    # What DHCP or a DNS change does between two boots: the plan follows the name, not the install.
    from edge.core.config import parse_config
    from edge.device.provision import plan_egress

    cfg = parse_config({"mqtt": {"brokers": ["mqtts://broker.van.example:8883"]}}, Path("/nonexistent"))
    answers = iter([["10.0.0.5"], ["10.0.0.6"]])
    first = plan_egress(cfg, Path("/nonexistent"), 0, lambda host, port: next(answers))
    second = plan_egress(cfg, Path("/nonexistent"), 0, lambda host, port: next(answers))
    assert first.allowed == ("localhost", "10.0.0.5") and second.allowed == ("localhost", "10.0.0.6")
