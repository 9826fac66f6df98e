"""`lfr-edge status`: what the running service reports (the same document as its MQTT heartbeat).

With no service running it says so (stderr) and reports the device as "not running" with the list
stored on it.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from edge.cli.options import add_config_option, device_config
from edge.core.errors import EXIT_OK, EXIT_VERIFY, InputError

if TYPE_CHECKING:
    from edge.core.config import Config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="the running service's status: cameras, watchlist, alerts, link")
    add_config_option(p)
    p.add_argument("--json", action="store_true", help="the status document as JSON on stdout")
    p.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    from edge.cli.service import ask_service
    from edge.core.config import load_config
    from edge.device.control import Command, ControlRequest

    cfg = load_config(device_config(args))
    answer = ask_service(cfg, ControlRequest(Command.STATUS), "reporting the stored watchlist")
    doc = answer.status if answer is not None and answer.status is not None else _not_running(cfg)
    # A stored list that no longer verifies exits 3 after the report, as `watchlist status` does.
    detail = doc.get("watchlist_detail")
    code = EXIT_VERIFY if isinstance(detail, dict) and detail.get("verification_failed") is True else EXIT_OK
    if args.json:
        print(json.dumps(doc))
    else:
        _print(doc)
    return code


def _not_running(cfg: Config) -> dict[str, Any]:
    from edge.device.status import ServiceState, Status, WatchlistStatus
    from edge.device.watchlist.store import store_from_config

    try:
        store = store_from_config(cfg)
        store.load()
        wl = store.status()
    except InputError as e:
        wl = WatchlistStatus.unusable(e)
    status = Status.of_device(cfg, ServiceState.NOT_RUNNING, 0.0, watchlist=wl)
    return status.to_json()


def _print(doc: dict[str, Any]) -> None:
    state = doc.get("state")
    head = f"service: {state}"
    if state == "online":
        head += f", up {doc.get('uptime_s')} s"
    print(f"{head} (device {doc.get('device_id')})")
    for cam in doc.get("cameras", []):
        print(
            f"camera {cam['camera']}: {cam['fps']} fps, {cam['frames']} frames ({cam['frames_dropped']} dropped), "
            f"{cam['faces_seen']} faces, {cam['matches']} matches"
        )
    wl = doc.get("watchlist_detail") or {}
    if wl.get("state") in ("active", "expired"):
        print(
            f"watchlist: {wl['state']}, version {wl['version']}, {wl['subjects']} subjects, expires {wl['expires_at']}"
        )
    elif wl.get("state") == "unusable":
        print(f"watchlist: unusable ({wl.get('error')})")
    else:
        print("watchlist: none installed")
    alerts = doc.get("alerts")
    if isinstance(alerts, dict):
        print(f"alerts: {alerts['raised']} raised, {alerts['delivered']} delivered, {alerts['pending']} spooled")
    mqtt = doc.get("mqtt")
    if isinstance(mqtt, dict):
        print(f"mqtt: {mqtt.get('broker') or 'not connected'} ({mqtt.get('reconnects')} reconnects)")
    if isinstance(doc.get("matching"), dict):
        m = doc["matching"]
        print(f"matching: threshold {m['threshold']} {m['units']} ({m['operating_point']})")
