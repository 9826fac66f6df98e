"""`lfr-edge keys init|show`: the device's own keys (the back office's are `lfr-edge backoffice init|show`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.cli.options import add_config_option, device_config
from edge.core.config import ConfigRole
from edge.core.errors import EXIT_OK, InputError
from edge.core.keys import (
    DEVICE_ED25519,
    DEVICE_ED25519_PUB,
    DEVICE_X25519,
    DEVICE_X25519_PUB,
    PublicKey,
    ensure_device_keys,
    key_id,
    load_device_keys,
    public_pem,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="device keys: create once (init) and print the public halves (show)")
    ks = p.add_subparsers(dest="keys_cmd", metavar="ACTION", required=True)
    init = ks.add_parser("init", help="create the device's X25519 and Ed25519 keys (kept if already there)")
    _dir_args(init)
    init.add_argument("--json", action="store_true", help="machine-readable output")
    init.set_defaults(handler=_device_init)
    show = ks.add_parser("show", help="print the device's public keys and key ids")
    _dir_args(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_device_show)


def _dir_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", help="keys directory (default: device.keys_dir from the config)")
    add_config_option(p, ConfigRole.DEVICE, "device config, for device.keys_dir")


def device_keys_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "dir", None):
        return Path(args.dir)
    from edge.core.config import load_config

    return load_config(device_config(args)).device.keys_dir


def describe_keys(entries: list[tuple[str, str, PublicKey]], as_json: bool) -> None:
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
    if args.json:
        print(json.dumps({"dir": str(d), "created": created,
                          "x25519": {"key_id": keys.x25519_id, "file": str(d / DEVICE_X25519_PUB)},
                          "ed25519": {"key_id": keys.ed25519_id, "file": str(d / DEVICE_ED25519_PUB)}}, indent=2))  # fmt: skip
        return EXIT_OK
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
    describe_keys(
        [
            ("x25519", str(d / DEVICE_X25519_PUB), keys.x25519_public),
            ("ed25519", str(d / DEVICE_ED25519_PUB), keys.ed25519_public),
        ],
        args.json,
    )
    return EXIT_OK
