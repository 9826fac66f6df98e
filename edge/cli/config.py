"""`lfr-edge check-config`: validate a device or back-office configuration without starting anything."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from edge.core.config import ConfigRole, config_path
from edge.core.config_check import CheckReport, ConfigKind, check_device, check_device_data, detect_kind
from edge.core.errors import EXIT_INPUT, EXIT_OK, ConfigError
from edge.core.logsetup import say
from edge.core.yamlsafe import load_yaml_file


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check-config",
        help="validate a configuration file: prints OK or every error (exit 2), then warnings",
        description="Runs the checks `run` (or, for a back-office file, `alerts listen`) makes before it "
        "starts: schema, referenced files and their key kinds, models known to the manifest, device keys. "
        "Every error is printed in one pass, one line each with its key path, then one warning line per "
        "insecure choice. Exit 0 when there are no errors (warnings allowed), 2 otherwise.",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"config file (default: a device file, ${ConfigRole.DEVICE.env} else {ConfigRole.DEVICE.default}; "
        f"with --backoffice ${ConfigRole.BACKOFFICE.env} else {ConfigRole.BACKOFFICE.default})",
    )
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--backoffice", action="store_true", help="check a back-office file (default: by its keys)")
    kind.add_argument("--device", action="store_true", help="check a device file (default: by its keys)")
    p.add_argument("--json", action="store_true", help="one JSON document: config, kind, ok, errors, warnings")
    p.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    path = config_path(args.config, ConfigRole.BACKOFFICE if args.backoffice else ConfigRole.DEVICE)
    kind = ConfigKind.BACKOFFICE if args.backoffice else ConfigKind.DEVICE if args.device else None
    report = check_file(path, kind)
    if args.json:
        doc = {"config": str(path), "kind": report.kind.value, "ok": report.ok,
               "errors": report.errors, "warnings": report.warnings}  # fmt: skip
        print(json.dumps(doc, indent=2), flush=True)
        return EXIT_OK if report.ok else EXIT_INPUT
    for line in report.errors:
        say(f"error: {line}")
    for line in report.warnings:
        say(f"warning: {line}", logging.WARNING)
    if not report.ok:
        return EXIT_INPUT
    print(f"OK: {path} ({report.kind.value} config{', with warnings' if report.warnings else ''})")
    sys.stdout.flush()
    return EXIT_OK


def check_file(path: Path, kind: ConfigKind | None = None) -> CheckReport:
    """Check `path` as `kind`, or as what its top-level keys say it is."""
    # The back-office checker is imported only for a back-office file: it brings the listener's
    # imports, which a device command (this module loads with every command) must not pay for.
    from edge.backoffice.config_check import check_backoffice

    if kind is ConfigKind.BACKOFFICE:
        return check_backoffice(path)
    if kind is ConfigKind.DEVICE:
        return check_device(path)
    try:
        data = load_yaml_file(path, "config")
    except ConfigError as e:
        return CheckReport(ConfigKind.DEVICE, errors=e.problems)
    if detect_kind(data) is ConfigKind.BACKOFFICE:
        return check_backoffice(path)
    return check_device_data(data, path, CheckReport(ConfigKind.DEVICE))
