"""Headless provisioning of a freshly flashed card, and the OS-level egress allow-list.

On first boot the service takes its config from /etc/lfr-edge/lfr-edge.yaml or, when that is
absent, from lfr-edge.yaml on the boot partition (the one partition a laptop can write to a
card). The file is validated before it is moved into place: a bad file is reported and left
where it is, and the service stays stopped (exit 2) rather than running half-configured.

The egress allow-list (systemd IPAddressAllow=) is rebuilt from the config in force on every
start, by lfr-edge-egress.service (systemd/lfr-edge-egress.service says why there and not in the
main unit):

- a broker given as an IP address is allowed as it is, and needs no DNS;
- a broker given as a host name is resolved *at that start*, and the resolvers the service itself
  would ask (the `nameserver` lines of /etc/resolv.conf) are allowed too, because the MQTT client
  resolves the name again each time it connects. A loopback resolver (systemd-resolved's stub
  127.0.0.53) is already covered by `localhost`; resolved's own upstream queries leave from its
  own cgroup, not the service's.

A broker whose address changes while the service runs is reachable again after the next start
(`systemctl restart lfr-edge`, or a reboot); brokers given as addresses avoid that window.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.core.config import BrokerURI, Config, load_config, parse_config
from edge.core.errors import ConfigError, RuntimeFailure
from edge.core.keys import atomic_write
from edge.core.yamlsafe import parse_yaml, read_config_bytes

log = logging.getLogger("lfr_edge.provision")

BOOT_DIRS = (Path("/boot/firmware"), Path("/boot"))
BOOT_NAME = "lfr-edge.yaml"
RESOLV_CONF = Path("/etc/resolv.conf")
# A runtime drop-in: /run is emptied at every boot, so no address resolved on an earlier boot can
# linger in the allow-list; each start writes the list for the config and the network of now.
EGRESS_DROPIN = Path("/run/systemd/system/lfr-edge.service.d/10-egress.conf")


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
        try:
            st = candidate.lstat()
        except OSError:
            continue
        # This runs as root on a file anyone holding the card can write: a link could make it read
        # (and echo in its error lines) any file on the system, so links are refused, not followed.
        if stat.S_ISLNK(st.st_mode):
            raise ConfigError([f"{candidate}: is a symbolic link; refused, not installed"])
        if stat.S_ISDIR(st.st_mode):  # checked here: the shared reader's fdopen fails on one unnamed
            raise ConfigError([f"{candidate}: is a directory, expected a config file; left in place, not installed"])
        try:
            # The same bounded reader as every config: refuses FIFOs, devices, directories and
            # files over the size limit before reading them.
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


# --- Egress ------------------------------------------------------------------------------------

Resolver = Callable[[str, int], list[str]]


def _getaddrinfo(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class EgressPlan:
    """What the service may reach besides loopback, and why."""

    broker_addresses: tuple[str, ...]  # every broker, as IP addresses
    resolvers: tuple[str, ...]  # DNS servers, only when some broker is named by host name
    names: tuple[str, ...]  # the host names resolved for this plan (for the drop-in's comment)

    @property
    def allowed(self) -> tuple[str, ...]:
        out: list[str] = ["localhost"]
        for a in (*self.broker_addresses, *self.resolvers):
            if a not in out:
                out.append(a)
        return tuple(out)


def resolvers_in_use(resolv_conf: Path = RESOLV_CONF) -> tuple[str, ...]:
    """Non-loopback `nameserver` addresses of resolv.conf: what the service's own lookups would ask.

    Loopback resolvers (systemd-resolved's 127.0.0.53, a local dnsmasq) are covered by `localhost`.
    An unreadable or empty file gives none: glibc then asks 127.0.0.1, also loopback."""
    try:
        text = resolv_conf.read_text(errors="replace")
    except OSError:
        return ()
    out: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != "nameserver":
            continue
        addr = parts[1].split("%", 1)[0]  # fe80::1%eth0: IPAddressAllow= takes no zone
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            continue
        if not ip.is_loopback and str(ip) not in out:
            out.append(str(ip))
    return tuple(out)


def plan_egress(
    cfg: Config,
    resolv_conf: Path = RESOLV_CONF,
    resolve_timeout_s: float = 60.0,
    resolver: Resolver = _getaddrinfo,
) -> EgressPlan:
    """Resolve every broker now; retry a host name that does not resolve yet (DHCP and DNS may come
    up after network-online.target) until `resolve_timeout_s`, then RuntimeFailure naming it."""
    addrs: list[str] = []
    names: list[str] = []
    for uri in cfg.mqtt.brokers:
        b = BrokerURI.parse(uri)
        if _is_address(b.host):
            found = [str(ipaddress.ip_address(b.host))]
        else:
            names.append(b.host)
            found = _resolve_with_retry(b.host, b.port, resolve_timeout_s, resolver)
        for a in found:
            if a not in addrs:
                addrs.append(a)
    resolvers = resolvers_in_use(resolv_conf) if names else ()
    return EgressPlan(tuple(addrs), resolvers, tuple(names))


def _resolve_with_retry(host: str, port: int, timeout_s: float, resolver: Resolver) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = resolver(host, port)
            if found:
                return found
            reason = "no addresses"
        except (OSError, UnicodeError) as e:
            reason = getattr(e, "strerror", None) or str(e)
        if time.monotonic() >= deadline:
            raise RuntimeFailure(
                f"mqtt.brokers: cannot resolve {host!r} ({reason}) within {timeout_s:g} s; egress list not changed"
            )
        log.info("broker name does not resolve yet; retrying", extra={"host": host, "reason": reason})
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def egress_dropin(plan: EgressPlan, config_path: Path | None = None) -> str:
    why = []
    if plan.names:
        why.append(f"# Host names resolved at this start: {', '.join(plan.names)}; resolvers allowed so the\n"
                   "# MQTT client can look them up again when it reconnects.\n")
    return (
        "# Written by `lfr-edge provision` (lfr-edge-egress.service) at every start of lfr-edge.service,\n"
        f"# from {config_path or 'the config in force'}: the service may reach its brokers and nothing else.\n"
        + "".join(why)
        + "[Service]\n"
        # The empty assignment resets the list, so this file states the whole allow-list by itself.
        + "IPAddressAllow=\n"
        + f"IPAddressAllow={' '.join(plan.allowed)}\n"
    )


def write_egress_dropin(plan: EgressPlan, path: Path, config_path: Path | None = None) -> bool:
    """Write the drop-in; True when its content changed (systemd must then reload its units)."""
    text = egress_dropin(plan, config_path).encode()
    with contextlib.suppress(OSError):
        if path.read_bytes() == text:
            return False
    _atomic_write(path, text, 0o644)
    return True


def egress_summary(plan: EgressPlan, changed: bool) -> dict[str, Any]:
    return {
        "allowed": list(plan.allowed),
        "brokers": list(plan.broker_addresses),
        "resolvers": list(plan.resolvers),
        "names": list(plan.names),
        "changed": changed,
    }
