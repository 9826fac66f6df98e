"""`lfr-edge audit verify`: check the device's tamper-evident audit log.

Exit 0 when the log is intact, 3 when it was tampered with (each broken record named by seq, segment
file and line), 2 when there is no log to check or an argument is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge.cli.options import add_config_option, device_config
from edge.core.config import AuditConfig, ConfigRole, load_config
from edge.core.errors import EXIT_OK, EXIT_VERIFY, InputError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="check the tamper-evident audit log")
    asub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    v = asub.add_parser(
        "verify",
        help="check the hash chain and signed checkpoints; exit 0 intact, 3 tampered",
        description="Detects an edited, deleted, inserted or reordered record and a forged checkpoint, "
        "and names the record (seq, segment file, line). Exit 0 intact, 3 tampered, 2 no log or bad arguments.",
    )
    add_config_option(v, ConfigRole.DEVICE, "device config: the log under device.data_dir, key from device.keys_dir")
    v.add_argument("--dir", help="audit log directory (instead of --config), e.g. a copy in the back office")
    v.add_argument("--pub", help="device Ed25519 public key (PEM) to check the checkpoint signatures")
    v.add_argument(
        "--checkpoint-every", type=int, metavar="N",
        help="the device's audit.checkpoint_every (default: from --config, else 50); longer runs "
        "without a signed checkpoint mean checkpoints were removed",
    )  # fmt: skip
    v.add_argument("--json", action="store_true", help="one JSON document instead of text")
    v.set_defaults(handler=_verify)


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
        cfg = load_config(device_config(args))
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
    return EXIT_OK if rep.ok else EXIT_VERIFY
