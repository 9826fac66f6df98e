"""`lfr-edge provision`: first-boot config install and the egress drop-in (run as root by systemd)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
from pathlib import Path

from edge.cli.options import add_config_option, device_config
from edge.core.config import ConfigRole
from edge.core.errors import EXIT_OK, RuntimeFailure
from edge.core.logsetup import setup_logging
from edge.device.provision import (
    BOOT_DIRS,
    EGRESS_DROPIN,
    RESOLV_CONF,
    egress_summary,
    plan_egress,
    provision,
    write_egress_dropin,
)

log = logging.getLogger("lfr_edge.provision")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "provision",
        help="install the config from the boot partition on first boot (validated); optionally write the egress drop-in",
    )
    add_config_option(p, ConfigRole.DEVICE, "where the device config is installed")
    p.add_argument("--boot-dir", action="append", type=Path, help="where a flashed card carries lfr-edge.yaml")
    p.add_argument(
        "--egress-dropin", type=Path, nargs="?", const=EGRESS_DROPIN, metavar="FILE",
        help=f"also write systemd IPAddressAllow= for the brokers (and, for host names, the resolvers) "
             f"here (default {EGRESS_DROPIN})",
    )
    p.add_argument("--resolv-conf", type=Path, default=RESOLV_CONF, help="resolver list read for host-name brokers")
    p.add_argument("--resolve-timeout", type=float, default=60.0, metavar="S",
                   help="keep retrying a broker name that does not resolve yet for this long (default 60)")
    p.add_argument("--reload", action="store_true",
                   help="run `systemctl daemon-reload` when the drop-in changed, so the next start uses it")
    p.add_argument("--json", action="store_true", help="print what the egress drop-in allows as JSON")
    p.set_defaults(handler=_provision)


def _provision(args: argparse.Namespace) -> int:
    setup_logging("INFO", "json")
    target = device_config(args)
    cfg = provision(target, tuple(args.boot_dir) if args.boot_dir else BOOT_DIRS)
    if args.egress_dropin:
        plan = plan_egress(cfg, args.resolv_conf, args.resolve_timeout)
        changed = write_egress_dropin(plan, args.egress_dropin, target)
        log.info("egress allow-list", extra={"path": str(args.egress_dropin), **egress_summary(plan, changed)})
        if changed and args.reload:
            _daemon_reload()
        if args.json:
            print(json.dumps({"dropin": str(args.egress_dropin), **egress_summary(plan, changed)}))
    return EXIT_OK


def _daemon_reload() -> None:
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise RuntimeFailure("--reload: systemctl not found; the drop-in is written but not applied")
    r = subprocess.run([systemctl, "daemon-reload"], capture_output=True, text=True, timeout=120, check=False)
    if r.returncode != 0:
        raise RuntimeFailure(f"systemctl daemon-reload failed ({r.stderr.strip() or r.returncode}); drop-in not applied")
