"""`lfr-edge wipe --all`: remove watchlist, spool, keys and audit log after a final signed record."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from edge.cli.options import add_config_option, device_config
from edge.core.config import Config, load_config
from edge.core.errors import EXIT_OK, EXIT_RUNTIME, InputError, RuntimeFailure
from edge.core.logsetup import say


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    w = sub.add_parser(
        "wipe",
        help="remove watchlist, spool, keys and audit log after publishing a final signed record",
    )
    w.add_argument("--all", action="store_true", required=True, help="wipe everything (the only mode)")
    add_config_option(w)
    w.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker (default 10)")
    w.add_argument("--no-publish", action="store_true", help="do not try MQTT; keep the final record on disk")
    w.add_argument("--json", action="store_true", help="one JSON document instead of text")
    w.set_defaults(handler=_wipe)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))
    sys.stdout.flush()


# ------------------------------------------------------------------------------------- wipe


def _refuse_while_running(cfg: Config) -> None:
    """A running service keeps its list in memory and would go on writing to what is removed: it
    must be stopped first (`watchlist wipe --local` wipes the list of a running service)."""
    from edge.device.control import Command, ControlRequest, ask, socket_path

    if ask(socket_path(cfg), ControlRequest(Command.STATUS, "wipe --all")) is not None:
        raise RuntimeFailure(
            "the lfr-edge service is running; stop it first (systemctl stop lfr-edge), then wipe --all"
        )


def _wipe(args: argparse.Namespace) -> int:
    from edge.device.audit.wipe import mqtt_publisher, wipe_all

    if not args.all:
        raise InputError("wipe: --all is required")
    cfg = load_config(device_config(args))
    _refuse_while_running(cfg)
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
            say("warning: no device key was found; the final record is NOT signed", logging.WARNING)
        if res.published:
            print(f"final record published to {cfg.topic_prefix}/audit and acknowledged by the broker")
        else:
            say(
                f"warning: the final record could not be published ({res.publish_error}); it is kept in {res.kept_at}",
                logging.WARNING,
            )
        sys.stdout.flush()
    # Exit 1 when the record did not reach the broker: someone must collect it from the device.
    return EXIT_OK if res.published or args.no_publish else EXIT_RUNTIME
