"""`lfr-edge audit verify`, `lfr-edge deployment report` and `lfr-edge wipe --all`.

verify exits 0 when the log is intact and 2 when it was tampered with (or cannot be read), naming
each broken record by seq, segment file and line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge.core.config import AuditConfig, config_path, load_config
from edge.core.errors import EXIT_OK, EXIT_RUNTIME, InputError

EXIT_TAMPERED = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="check the tamper-evident audit log")
    asub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    v = asub.add_parser(
        "verify",
        help="check the hash chain and signed checkpoints; exit 0 intact, 2 tampered",
        description="Detects an edited, deleted, inserted or reordered record and a forged checkpoint, "
        "and names the record (seq, segment file, line). Exit 0 intact, 2 tampered or unreadable.",
    )
    v.add_argument("--config", help="device config: the log under device.data_dir, key from device.keys_dir")
    v.add_argument("--dir", help="audit log directory (instead of --config), e.g. a copy in the back office")
    v.add_argument("--pub", help="device Ed25519 public key (PEM) to check the checkpoint signatures")
    v.add_argument(
        "--checkpoint-every", type=int, metavar="N",
        help="the device's audit.checkpoint_every (default: from --config, else 50); longer runs "
        "without a signed checkpoint mean checkpoints were removed",
    )  # fmt: skip
    v.add_argument("--json", action="store_true", help="one JSON document instead of text")
    v.set_defaults(handler=_verify)

    dep = sub.add_parser("deployment", help="deployment records built from the audit log")
    dsub = dep.add_subparsers(dest="deployment_command", metavar="SUBCOMMAND", required=True)
    r = dsub.add_parser(
        "report",
        help="start, end, location, watchlist, counts, alerts, thresholds, models of each deployment",
    )
    r.add_argument("--config", help="device config (default: $LFR_EDGE_CONFIG or /etc/lfr-edge/lfr-edge.yaml)")
    r.add_argument("--dir", help="audit log directory (instead of --config)")
    r.add_argument("--since", help="only deployments still running at or after this ISO-8601 time")
    r.add_argument("--json", action="store_true", help="a JSON list of deployment records")
    r.set_defaults(handler=_report)

    w = sub.add_parser(
        "wipe",
        help="remove watchlist, spool, keys and audit log after publishing a final signed record",
    )
    w.add_argument("--all", action="store_true", required=True, help="wipe everything (the only mode)")
    w.add_argument("--config", help="device config (default: $LFR_EDGE_CONFIG or /etc/lfr-edge/lfr-edge.yaml)")
    w.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker (default 10)")
    w.add_argument("--no-publish", action="store_true", help="do not try MQTT; keep the final record on disk")
    w.add_argument("--json", action="store_true", help="one JSON document instead of text")
    w.set_defaults(handler=_wipe)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))
    sys.stdout.flush()


# ------------------------------------------------------------------------------------- verify


def _verify(args: argparse.Namespace) -> int:
    from edge.core.audit.verify import verify_log
    from edge.core.keys import DEVICE_ED25519_PUB, load_ed25519_public
    from edge.device.audit.service import audit_dir

    checkpoint_every = AuditConfig().checkpoint_every
    pub = load_ed25519_public(args.pub) if args.pub else None
    if args.dir:
        directory = Path(args.dir)
    else:
        cfg = load_config(config_path(args.config))
        directory = audit_dir(cfg)
        checkpoint_every = cfg.audit.checkpoint_every
        if pub is None:
            keyfile = cfg.device.keys_dir / DEVICE_ED25519_PUB
            if keyfile.exists():
                pub = load_ed25519_public(keyfile)
    if not directory.is_dir():
        raise InputError(f"{directory}: no audit log here (directory not found)")
    if args.checkpoint_every is not None:
        if args.checkpoint_every < 1:
            raise InputError(f"--checkpoint-every: {args.checkpoint_every} must be >= 1")
        checkpoint_every = args.checkpoint_every
    rep = verify_log(directory, pub, checkpoint_every)
    if args.json:
        _print_json(rep.to_dict())
    else:
        span = f"seq {rep.first_seq}..{rep.last_seq}" if rep.records else "no records"
        sig = (
            f"{rep.checkpoints_verified}/{rep.checkpoints} checkpoints signed by device key {rep.key_id}"
            if rep.signatures_checked
            else f"{rep.checkpoints} checkpoints, signatures NOT checked (no public key)"
        )
        print(f"{directory}: {rep.records} records ({span}) in {rep.segments} segment(s); {sig}")
        for w in rep.warnings:
            print(f"note: {w}")
        if rep.ok:
            print("INTACT")
        else:
            print(f"TAMPERED: {len(rep.problems)} problem(s)")
            for p in rep.problems:
                print(f"  seq {p.seq if p.seq is not None else '?'} ({p.segment} line {p.line}): {p.what}")
        sys.stdout.flush()
    return EXIT_OK if rep.ok else EXIT_TAMPERED


# ------------------------------------------------------------------------------------- report


def _report(args: argparse.Namespace) -> int:
    from edge.core.audit.log import parse_iso
    from edge.device.audit.deployment import format_text, load_deployments
    from edge.device.audit.service import audit_dir

    since = None
    if args.since:
        try:
            since = parse_iso(args.since)
        except ValueError:
            raise InputError(f"--since: {args.since!r} is not an ISO-8601 time (e.g. 2026-11-26T09:00Z)") from None
    directory = Path(args.dir) if args.dir else audit_dir(load_config(config_path(args.config)))
    if not directory.is_dir():
        raise InputError(f"{directory}: no audit log here (directory not found)")
    deps = load_deployments(directory, since)
    if args.json:
        _print_json(deps)
    else:
        print(format_text(deps))
        sys.stdout.flush()
    return EXIT_OK


# ------------------------------------------------------------------------------------- wipe


def _wipe(args: argparse.Namespace) -> int:
    from edge.device.audit.wipe import mqtt_publisher, wipe_all

    if not args.all:
        raise InputError("wipe: --all is required")
    cfg = load_config(config_path(args.config))
    publisher = None if args.no_publish else mqtt_publisher(cfg, args.timeout)
    res = wipe_all(cfg, publisher)
    if args.json:
        _print_json(
            {
                "removed": res.removed,
                "signed": res.signed,
                "published": res.published,
                "publish_error": res.publish_error,
                "kept_at": res.kept_at,
                "final_record": [json.loads(line) for line in res.lines],
            }
        )
    else:
        print(f"wiped {len(res.removed)} item(s): watchlist, spool, keys and audit log")
        if not res.signed:
            print("warning: no device key was found; the final record is NOT signed", file=sys.stderr)
        if res.published:
            print(f"final record published to {cfg.topic_prefix}/audit and acknowledged by the broker")
        else:
            print(
                f"warning: the final record could not be published ({res.publish_error}); "
                f"it is kept in {res.kept_at}",
                file=sys.stderr,
            )
        sys.stdout.flush()
    # Exit 1 when the record did not reach the broker: someone must collect it from the device.
    return EXIT_OK if res.published or args.no_publish else EXIT_RUNTIME
