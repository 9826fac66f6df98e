"""`lfr-edge deployment report`: the deployment records built from the device's audit log."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge.cli.options import add_config_option, device_config
from edge.core.config import load_config
from edge.core.errors import EXIT_OK, InputError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dep = sub.add_parser("deployment", help="deployment records built from the audit log")
    dsub = dep.add_subparsers(dest="deployment_command", metavar="SUBCOMMAND", required=True)
    r = dsub.add_parser(
        "report",
        help="start, end, location, watchlist, counts, alerts, thresholds, models of each deployment",
    )
    add_config_option(r)
    r.add_argument("--dir", help="audit log directory (instead of --config)")
    r.add_argument("--since", help="only deployments still running at or after this RFC 3339 time (e.g. 2026-11-26T09:00:00Z)")
    r.add_argument("--json", action="store_true", help="a JSON list of deployment records")
    r.set_defaults(handler=_report)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))
    sys.stdout.flush()


# ------------------------------------------------------------------------------------- report


def _report(args: argparse.Namespace) -> int:
    from edge.core.timefmt import parse_utc
    from edge.device.audit.deployment import format_text, load_deployments
    from edge.device.audit.service import audit_dir

    since = None
    if args.since:
        since = parse_utc(args.since, "--since")  # an RFC 3339 time; a bad one exits 2 naming --since
    directory = Path(args.dir) if args.dir else audit_dir(load_config(device_config(args)))
    if not directory.is_dir():
        raise InputError(f"{directory}: no audit log here (directory not found)")
    deps = load_deployments(directory, since)
    if args.json:
        _print_json(deps)
    else:
        print(format_text(deps))
        sys.stdout.flush()
    return EXIT_OK


