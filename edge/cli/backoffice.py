"""`lfr-edge backoffice init|show|serve|user`: the back office's keys and its review console.

init and show need only the base install; serve and user need the `backoffice` extra, and say so in
one line when it is missing.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge.cli.keys import describe_keys
from edge.cli.options import add_config_option, backoffice_config
from edge.core.config import ConfigRole
from edge.core.errors import EXIT_OK, InputError
from edge.core.keys import (
    BACKOFFICE_ED25519,
    BACKOFFICE_ED25519_PUB,
    BACKOFFICE_X25519_PUB,
    generate_backoffice_keys,
    load_backoffice_keys,
)
from edge.core.logsetup import setup_logging

if TYPE_CHECKING:
    from edge.backoffice.console.server import Parts


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("backoffice", help="back office: keys (init, show) and the review console (serve, user)")
    bs = b.add_subparsers(dest="backoffice_cmd", metavar="ACTION", required=True)
    binit = bs.add_parser("init", help="create the back office's Ed25519 signing and X25519 alert keys")
    binit.add_argument("--dir", required=True, help="directory for the keys (created 0700)")
    binit.add_argument("--json", action="store_true", help="machine-readable output")
    binit.set_defaults(handler=_backoffice_init)
    bshow = bs.add_parser("show", help="print the back office's public keys and key ids")
    bshow.add_argument("--dir", required=True, help="back-office keys directory")
    bshow.add_argument("--json", action="store_true", help="machine-readable output")
    bshow.set_defaults(handler=_backoffice_show)

    serve = bs.add_parser(
        "serve",
        help="run the review console: ingest alerts from the broker and serve the web pages",
        description="Subscribes to the fleet's alerts, status and deployment records (verifying every alert "
        "as `alerts listen` does), stores them, and serves the console on console.host:console.port "
        "(127.0.0.1:8080 by default; put a TLS reverse proxy in front, see docs/CONSOLE.md).",
    )
    add_config_option(serve, ConfigRole.BACKOFFICE, "back-office config with a console: section")
    serve.add_argument("-v", "--verbose", action="store_true", help="log connection details to stderr")
    serve.set_defaults(handler=_serve)

    user = bs.add_parser("user", help="console accounts: add (the first supervisor comes from here), list")
    us = user.add_subparsers(dest="user_cmd", metavar="ACTION", required=True)
    add = us.add_parser("add", help="create a console account")
    add_config_option(add, ConfigRole.BACKOFFICE, "back-office config with a console: section")
    add.add_argument("--username", required=True)
    add.add_argument("--role", required=True, choices=["officer", "supervisor"])
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin (else: prompt)"
    )
    add.set_defaults(handler=_user_add)
    ls = us.add_parser("list", help="list console accounts")
    add_config_option(ls, ConfigRole.BACKOFFICE, "back-office config with a console: section")
    ls.add_argument("--json", action="store_true", help="a JSON list of accounts")
    ls.set_defaults(handler=_user_list)


def _backoffice_init(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    created = not (d / BACKOFFICE_ED25519).exists()
    keys = generate_backoffice_keys(d) if created else load_backoffice_keys(d)
    if args.json:
        print(json.dumps({"dir": str(d), "created": created,
                          "ed25519": {"key_id": keys.ed25519_id, "file": str(d / BACKOFFICE_ED25519_PUB)},
                          "x25519": {"key_id": keys.x25519_id, "file": str(d / BACKOFFICE_X25519_PUB)}}, indent=2))  # fmt: skip
        return EXIT_OK
    print(f"back-office keys {'created' if created else 'already present, kept'} in {d}")
    print(f"  ed25519 (signs watchlists/commands): {keys.ed25519_id}  {d / BACKOFFICE_ED25519_PUB}")
    print(f"  x25519 (receives sealed alerts):    {keys.x25519_id}  {d / BACKOFFICE_X25519_PUB}")
    print("  give devices the ed25519 public key (watchlist.trusted_signers) and x25519 (alerts.seal_to)")
    return EXIT_OK


def _backoffice_show(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    keys = load_backoffice_keys(d)
    describe_keys(
        [
            ("ed25519", str(d / BACKOFFICE_ED25519_PUB), keys.ed25519_public),
            ("x25519", str(d / BACKOFFICE_X25519_PUB), keys.x25519_public),
        ],
        args.json,
    )
    return EXIT_OK


def require_backoffice_extra(what: str = "the console") -> None:
    """One line and exit 2 when the optional backoffice extra is not installed (never a traceback)."""
    try:
        import edge.backoffice.console.server  # noqa: F401  (pulls in every dependency of the extra)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == "edge":
            raise  # project code missing is a bug, not an absent extra
        raise InputError(
            f"{what} needs the backoffice extra ({e.name} is missing): pip install 'lfr-edge[backoffice]'"
        ) from None


def _parts(config: Path) -> Parts:
    require_backoffice_extra()
    from edge.backoffice.console.config import load_console_config
    from edge.backoffice.console.server import open_parts

    return open_parts(load_console_config(config))


def _serve(args: argparse.Namespace) -> int:
    require_backoffice_extra()
    import uvicorn  # noqa: F401  (part of the extra; fail here, not after the broker connected)

    from edge.backoffice.console.config import load_console_config
    from edge.backoffice.console.server import serve

    setup_logging("INFO" if args.verbose else "WARNING", "text")
    logging.getLogger("paho").setLevel(logging.WARNING)
    cfg = load_console_config(backoffice_config(args))

    def ready(url: str) -> None:
        print(f"console: serving {url} (ingesting {cfg.topic_root}/+/alerts from {', '.join(cfg.brokers)})", flush=True)

    serve(cfg, ready)
    return EXIT_OK


def _user_add(args: argparse.Namespace) -> int:
    from edge.backoffice.console.models import Role

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
        if getpass.getpass("again: ") != password:
            raise InputError("the two passwords differ")
    parts = _parts(backoffice_config(args))
    try:
        user = parts.accounts.add_user(args.username, Role(args.role), password, by="cli")
    finally:
        parts.audit.close()
    print(f"user {user.username} ({user.role.value}) created")
    return EXIT_OK


def _user_list(args: argparse.Namespace) -> int:
    parts = _parts(backoffice_config(args))
    try:
        users = [(u.username, u.role.value, active) for u, active, _ in parts.accounts.users()]
        if args.json:
            print(json.dumps([{"username": n, "role": r, "active": a} for n, r, a in users], indent=2))
        else:
            for name, role, active in users:
                print(f"{name}\t{role}\t{'active' if active else 'disabled'}")
    finally:
        parts.audit.close()
    return EXIT_OK
