"""`lfr-edge keys init|show` (device) and `lfr-edge backoffice init|show` (back office)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.core.errors import EXIT_OK, InputError
from edge.core.keys import (
    BACKOFFICE_ED25519,
    BACKOFFICE_ED25519_PUB,
    BACKOFFICE_X25519_PUB,
    DEVICE_ED25519,
    DEVICE_ED25519_PUB,
    DEVICE_X25519,
    DEVICE_X25519_PUB,
    PublicKey,
    ensure_device_keys,
    generate_backoffice_keys,
    key_id,
    load_backoffice_keys,
    load_device_keys,
    public_pem,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="device keys: create once (init) and print the public halves (show)")
    ks = p.add_subparsers(dest="keys_cmd", metavar="ACTION", required=True)
    init = ks.add_parser("init", help="create the device's X25519 and Ed25519 keys (kept if already there)")
    _dir_args(init)
    init.set_defaults(handler=_device_init)
    show = ks.add_parser("show", help="print the device's public keys and key ids")
    _dir_args(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_device_show)

    b = sub.add_parser("backoffice", help="back-office keys: watchlist/command signing and alert receiving")
    bs = b.add_subparsers(dest="backoffice_cmd", metavar="ACTION", required=True)
    binit = bs.add_parser("init", help="create the back office's Ed25519 signing and X25519 alert keys")
    binit.add_argument("--dir", required=True, help="directory for the keys (created 0700)")
    binit.set_defaults(handler=_backoffice_init)
    bshow = bs.add_parser("show", help="print the back office's public keys and key ids")
    bshow.add_argument("--dir", required=True, help="back-office keys directory")
    bshow.add_argument("--json", action="store_true", help="machine-readable output")
    bshow.set_defaults(handler=_backoffice_show)


def _dir_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", help="keys directory (default: device.keys_dir from the config)")
    p.add_argument("--config", help="config file, for device.keys_dir (default: $LFR_EDGE_CONFIG or /etc/…)")


def device_keys_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "dir", None):
        return Path(args.dir)
    from edge.core.config import load_config

    return load_config(args.config).device.keys_dir


def _describe(entries: list[tuple[str, str, PublicKey]], as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    role: {"key_id": key_id(k), "file": file, "pem": public_pem(k).decode()}
                    for role, file, k in entries
                },
                indent=2,
            )
        )
        return
    for role, file, k in entries:
        print(f"{role}: key id {key_id(k)}  ({file})")
        print(public_pem(k).decode().rstrip())


def _device_init(args: argparse.Namespace) -> int:
    d = device_keys_dir(args)
    keys, created = ensure_device_keys(d)
    verb = "created" if created else "already present, kept"
    print(f"device keys {verb} in {d}")
    print(f"  x25519 (receives watchlists): {keys.x25519_id}  {d / DEVICE_X25519_PUB}")
    print(f"  ed25519 (signs alerts/audit): {keys.ed25519_id}  {d / DEVICE_ED25519_PUB}")
    return EXIT_OK


def _device_show(args: argparse.Namespace) -> int:
    d = device_keys_dir(args)
    if not (d / DEVICE_X25519).exists() and not (d / DEVICE_ED25519).exists():
        raise InputError(f"{d}: no device keys; create them with `lfr-edge keys init --dir {d}`")
    keys = load_device_keys(d)
    _describe(
        [
            ("x25519", str(d / DEVICE_X25519_PUB), keys.x25519_public),
            ("ed25519", str(d / DEVICE_ED25519_PUB), keys.ed25519_public),
        ],
        args.json,
    )
    return EXIT_OK


def _backoffice_init(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    if (d / BACKOFFICE_ED25519).exists():
        keys = load_backoffice_keys(d)
        print(f"back-office keys already present, kept in {d}")
    else:
        keys = generate_backoffice_keys(d)
        print(f"back-office keys created in {d}")
    print(f"  ed25519 (signs watchlists/commands): {keys.ed25519_id}  {d / BACKOFFICE_ED25519_PUB}")
    print(f"  x25519 (receives sealed alerts):    {keys.x25519_id}  {d / BACKOFFICE_X25519_PUB}")
    print("  give devices the ed25519 public key (watchlist.trusted_signers) and x25519 (alerts.seal_to)")
    return EXIT_OK


def _backoffice_show(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    keys = load_backoffice_keys(d)
    _describe(
        [
            ("ed25519", str(d / BACKOFFICE_ED25519_PUB), keys.ed25519_public),
            ("x25519", str(d / BACKOFFICE_X25519_PUB), keys.x25519_public),
        ],
        args.json,
    )
    return EXIT_OK
