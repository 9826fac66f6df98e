"""Headless provisioning of a freshly flashed card, and the OS-level egress allow-list.

On first boot the service takes its config from /etc/lfr-edge/lfr-edge.yaml or, when that is
absent, from lfr-edge.yaml on the boot partition (the one partition a laptop can write to a
card). The file is validated before it is moved into place: a bad file is reported and left
where it is, and the service stays stopped (exit 2) rather than running half-configured.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
from pathlib import Path

from edge.core.config import BrokerURI, Config, load_config, parse_config
from edge.core.errors import ConfigError
from edge.core.keys import atomic_write
from edge.core.yamlsafe import parse_yaml, read_config_bytes

log = logging.getLogger("lfr_edge.provision")

BOOT_DIRS = (Path("/boot/firmware"), Path("/boot"))
BOOT_NAME = "lfr-edge.yaml"


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    gid = None
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):  # the service user reads its config through the group
            gid = grp.getgrnam("lfr-edge").gr_gid
    atomic_write(path, data, mode, gid)


def provision(target: Path, boot_dirs: tuple[Path, ...] = BOOT_DIRS) -> Config:
    """Return the validated config in force, moving one from the boot partition first if needed."""
    if target.exists():
        cfg = load_config(target)
        log.info("configuration in place", extra={"path": str(target)})
        return cfg
    for d in boot_dirs:
        candidate = d / BOOT_NAME
        if not candidate.is_file():
            continue
        try:
            # The same bounded reader as every config: the boot partition is writable by anyone
            # holding the card, and this runs as root.
            raw = read_config_bytes(candidate)
            cfg = parse_config(parse_yaml(raw, str(candidate)), target.parent, str(candidate), require_id=True)
        except ConfigError as e:
            lines = [p if p.startswith(str(candidate)) else f"{candidate}: {p}" for p in e.problems]
            raise ConfigError([*lines, f"{candidate}: left in place, not installed"]) from None
        _atomic_write(target, raw, 0o640)
        candidate.unlink()
        log.warning("provisioned configuration from boot partition", extra={"from": str(candidate), "to": str(target)})
        return cfg
    where = ", ".join(str(d / BOOT_NAME) for d in boot_dirs)
    raise ConfigError([f"{target}: no configuration (nor at {where}); the service stays stopped"])


def broker_addresses(cfg: Config) -> list[str]:
    """IP addresses of every configured broker, for systemd's IPAddressAllow=."""
    out: list[str] = []
    for uri in cfg.mqtt.brokers:
        b = BrokerURI.parse(uri)
        try:
            infos = socket.getaddrinfo(b.host, b.port, proto=socket.IPPROTO_TCP)
        except socket.gaierror as e:
            raise ConfigError([f"mqtt.brokers: cannot resolve {b.host!r} ({e.strerror}); egress list not written"]) from None
        for info in infos:
            addr = str(info[4][0])
            if addr not in out:
                out.append(addr)
    return out


def egress_dropin(cfg: Config) -> str:
    addrs = broker_addresses(cfg)
    return (
        "# Written by setup.sh from the config: the service may talk to its brokers and nothing else.\n"
        "[Service]\n"
        f"IPAddressAllow={' '.join(['localhost', *addrs])}\n"
    )


def write_egress_dropin(cfg: Config, path: Path) -> None:
    _atomic_write(path, egress_dropin(cfg).encode(), 0o644)
