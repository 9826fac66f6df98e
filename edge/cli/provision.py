"""`lfr-edge provision`: first-boot config install (ExecStartPre) and the egress drop-in."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.cli.options import add_config_option, device_config
from edge.core.config import ConfigRole
from edge.core.errors import EXIT_OK
from edge.core.logsetup import setup_logging
from edge.device.provision import BOOT_DIRS, provision, write_egress_dropin


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("provision", help="install the config from the boot partition on first boot, validated")
    add_config_option(p, ConfigRole.DEVICE, "where the device config is installed")
    p.add_argument("--boot-dir", action="append", type=Path, help="where a flashed card carries lfr-edge.yaml")
    p.add_argument("--egress-dropin", type=Path, help="also write systemd IPAddressAllow= for the brokers here")
    p.set_defaults(handler=_provision)


def _provision(args: argparse.Namespace) -> int:
    setup_logging("INFO", "json")
    target = device_config(args)
    cfg = provision(target, tuple(args.boot_dir) if args.boot_dir else BOOT_DIRS)
    if args.egress_dropin:
        write_egress_dropin(cfg, args.egress_dropin)
    return EXIT_OK
