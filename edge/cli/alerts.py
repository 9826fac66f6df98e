"""`lfr-edge alerts …`: the back-office listener, an end-to-end test alert, and the spool's state."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge.cli.options import add_config_option, backoffice_config, device_config
from edge.core.config import ConfigRole
from edge.core.errors import EXIT_OK, EXIT_RUNTIME, RuntimeFailure, VerificationFailed
from edge.core.logsetup import say, setup_logging


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("alerts", help="alerts over MQTT: back-office listener, test alert, spool state")
    asub = p.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)

    lp = asub.add_parser(
        "listen",
        help="back office: receive, verify, unseal and print alerts",
        description="Subscribe to <topic_root>/+/alerts and /status, verify each alert's signature against "
        "the device's registered key, unseal it, drop duplicates, print one line per alert. Forged, "
        "tampered or unknown-device alerts are printed as REJECTED lines, never as alerts. With --out, "
        "each alert is stored durably in DIR (fsynced) and only then acknowledged to the device, which "
        "deletes it from its spool; without --out alerts are shown but not acknowledged (they stay "
        "spooled on the device until a storing back office acknowledges them).",
    )
    add_config_option(lp, ConfigRole.BACKOFFICE, "back-office config (see config/backoffice.example.yaml)")
    lp.add_argument("--count", type=int, default=0, help="exit after N distinct alerts (0: run until stopped)")
    lp.add_argument("--timeout", type=float, default=0.0,
                    help="exit after S seconds (--count not reached: exit 3 if messages were rejected, else 1)")  # fmt: skip
    lp.add_argument("--out", type=Path,
                    help="store each alert durably as DIR/<alert_id>.json (and its face crop as .jpg, mode 0600) "
                    "and acknowledge it to the device")  # fmt: skip
    lp.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    lp.add_argument("-v", "--verbose", action="store_true", help="log connection details to stderr")
    lp.set_defaults(handler=_listen)

    tp = asub.add_parser(
        "test",
        help="device: send synthetic test alerts (category 'test') through the real alert path",
        description="Signs, seals, spools and publishes N synthetic alerts exactly as the pipeline would, "
        "then waits until the back office has acknowledged every alert in the spool (including older "
        "ones), or with --until broker only until the broker has accepted them.",
    )
    add_config_option(tp)
    tp.add_argument("--count", type=int, default=1, help="test alerts to send (0: only drain the spool)")
    tp.add_argument("--interval", type=float, default=0.0, help="seconds between alerts")
    tp.add_argument("--wait", type=float, default=30.0, help="seconds to wait for delivery (exit 1 if not done)")
    tp.add_argument("--until", choices=("backoffice", "broker"), default="backoffice",
                    help="wait for the back office's signed acknowledgement (default) or only the broker's")  # fmt: skip
    tp.add_argument("--json", action="store_true", help="print the result as JSON")
    tp.add_argument("-v", "--verbose", action="store_true", help="log connection details to stderr")
    tp.set_defaults(handler=_test)

    sp = asub.add_parser("spool", help="device: alerts and audit records waiting in the spool, drops counted")
    add_config_option(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(handler=_spool)


def _stderr_logging(verbose: bool) -> None:
    # Output goes to stdout; log lines (connection errors) to stderr so they never mix with it.
    setup_logging("INFO" if verbose else "WARNING", "text")
    logging.getLogger("paho").setLevel(logging.WARNING)


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- listen


def _alert_line(summary: dict[str, Any], face: Path | None) -> str:
    head = f"ALERT {summary['time']} {summary['device_id']}/{summary['camera']}"
    if "subject_id" not in summary:
        return f"{head} subject=<sealed: no unseal_key> alert={summary['alert_id']}"
    out = (
        f"{head} subject={summary['subject_id']} category={summary['category']} "
        f"priority={summary['priority']} score={summary['score']:.3f} margin={summary['margin']:.3f} "
        f"threshold={summary['threshold']:.3f} track={summary['track_id']} alert={summary['alert_id']}"
    )
    return out + (f" face={face}" if face else "")


def _listen(args: argparse.Namespace) -> int:
    from edge.backoffice.listener import AlertListener, Handled, load_backoffice_config, stored_name
    from edge.core.alert_message import VerifiedAlert
    from edge.core.keys import atomic_write

    _stderr_logging(args.verbose)
    cfg = load_backoffice_config(backoffice_config(args))
    out_dir: Path | None = args.out
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    done = threading.Event()
    count = 0
    lock = threading.Lock()
    last_state: dict[str, str] = {}

    def on_alert(alert: VerifiedAlert) -> Handled:
        nonlocal count
        face_path = None
        summary = alert.summary()
        stored = False
        if out_dir is not None:
            # Raising here (DIR unwritable, disk full) leaves the alert unacknowledged: the device re-sends it.
            name = stored_name(alert.alert_id)
            record = out_dir / f"{name}.json"
            if record.exists():
                return Handled.DUPLICATE  # stored by an earlier run: acknowledged again, not shown again
            if alert.face_jpeg is not None:
                face_path = out_dir / f"{name}.jpg"
                atomic_write(face_path, alert.face_jpeg)
            doc = {**summary, "face_file": str(face_path) if face_path else None}
            atomic_write(record, json.dumps(doc, sort_keys=True).encode() + b"\n")
            stored = True
        with lock:
            if args.json:
                _emit(json.dumps({"event": "alert", **summary, "face_file": str(face_path) if face_path else None}))
            else:
                _emit(_alert_line(summary, face_path))
            count += 1
            if args.count and count >= args.count:
                done.set()
        return Handled.STORED if stored else Handled.SHOWN

    rejected = 0

    def on_reject(topic: str, reason: str) -> None:
        nonlocal rejected
        with lock:
            rejected += 1
            if args.json:
                _emit(json.dumps({"event": "rejected", "topic": topic, "reason": reason}))
            else:
                _emit(f"REJECTED {topic}: {reason}")

    def on_status(device: str, status: dict[str, Any]) -> None:
        state = str(status.get("state", "?"))
        alerts = status.get("alerts")
        overdue = alerts.get("overdue") if isinstance(alerts, dict) else None
        if isinstance(overdue, int) and not isinstance(overdue, bool) and overdue > 0:
            # Alerts the device holds that no back office has acknowledged for too long: worth a line.
            state += f" ({overdue} alert(s) unacknowledged past alerts.ack_overdue_s)"
        with lock:
            if args.json:
                _emit(json.dumps({"event": "status", "device_id": device, **status}))
            elif last_state.get(device) != state:
                _emit(f"STATUS {device} {state}")
            last_state[device] = state

    listener = AlertListener(cfg, on_alert, on_reject, on_status)
    if out_dir is None:  # after the config and keys are known good: a refusal stays one line
        say("note: without --out alerts are shown but not stored, so they are not acknowledged: "
            "devices keep them spooled and send them again", logging.WARNING)  # fmt: skip
    listener.start()
    if sys.stderr.isatty() and not args.json:
        say(f"listening on {', '.join(cfg.brokers)} for {cfg.topic_root}/+/alerts …", logging.INFO)
    try:
        done.wait(args.timeout if args.timeout > 0 else None)
    finally:
        listener.stop()
    if args.count and count < args.count:
        missing = f"timed out after {args.timeout:g} s with {count} of {args.count} alerts"
        if rejected:  # what came did not verify: tampering or a key problem, not a quiet broker
            raise VerificationFailed(f"{missing}; {rejected} message(s) rejected (see the REJECTED lines)")
        raise RuntimeFailure(missing)
    return EXIT_OK


# --------------------------------------------------------------------------- test (device side)


def _test_event(i: int, camera: str) -> Any:
    from edge.core.types import Match, MatchEvent, Subject

    subject = Subject(subject_id=f"TEST-{i:06d}", category="test", priority=0)
    return MatchEvent(
        match=Match(subject=subject, score=1.0, margin=1.0, threshold=1.0),
        track_id=i,
        frame_seq=i,
        t_wall=time.time(),
        camera=camera,
        bbox=(0.0, 0.0, 0.0, 0.0),
        frames_fused=0,
        watchlist_version=0,
    )


def _test(args: argparse.Namespace) -> int:
    from edge.core.config import load_config
    from edge.device.publisher import AlertPublisher, Delivery

    _stderr_logging(args.verbose)
    cfg = load_config(device_config(args))
    until = Delivery(args.until)
    pub = AlertPublisher.from_config(cfg).start()
    try:
        for i in range(args.count):
            pub.on_match(_test_event(i, cfg.device.camera_name))
            if args.interval > 0:
                time.sleep(args.interval)
        ok = pub.flush(args.wait, until)
        acks = pub.ack_status()
        result = {
            "sent": args.count, "pending": pub.spool.pending(), "delivered": pub.delivered,
            "sent_to_broker": pub.sent_to_broker, "awaiting_ack": acks.awaiting_ack, "ok": ok,
        }  # fmt: skip
    finally:
        pub.stop()
    if args.json:
        _emit(json.dumps(result))
    elif ok and until is Delivery.BACKOFFICE:
        _emit(f"OK: {result['delivered']} alert(s) acknowledged by the back office, spool empty")
    elif ok:
        _emit(
            f"OK: everything spooled accepted by the broker; {result['awaiting_ack']} alert(s) "
            "still await the back office's acknowledgement (kept in the spool until then)"
        )
    if not ok:
        say(
            f"error: {result['pending']} message(s) still in the spool after {args.wait:g} s, "
            f"{result['awaiting_ack']} alert(s) not acknowledged by the back office "
            "(they stay spooled and are sent again, also on the next start)"
        )
        return EXIT_RUNTIME
    return EXIT_OK


def _spool(args: argparse.Namespace) -> int:
    from edge.core.config import load_config
    from edge.core.keys import storage_key
    from edge.device.publisher import SPOOL_FILE, STORAGE_KEY
    from edge.device.spool import Spool

    cfg = load_config(device_config(args))
    path = cfg.device.data_dir / SPOOL_FILE
    awaiting = overdue = 0
    oldest: float | None = None
    if not path.exists():
        counters: dict[str, int] = {}
        pending = 0
    else:
        spool = Spool(path, storage_key(cfg.device.keys_dir, STORAGE_KEY))
        pending, counters, waiting = spool.pending(), spool.counters(), spool.awaiting_ack()
        spool.close()
        awaiting, overdue = waiting.count, waiting.overdue
        if waiting.oldest_created is not None:
            oldest = round(max(0.0, time.time() - waiting.oldest_created), 1)
    if args.json:
        _emit(json.dumps({"spool": str(path), "pending": pending, "awaiting_ack": awaiting,
                          "oldest_unacked_age_s": oldest, "overdue": overdue, "counters": counters}))  # fmt: skip
    else:
        _emit(f"{path}: {pending} pending, {awaiting} alert(s) awaiting the back office's acknowledgement"
              + (f" (oldest {oldest:.0f} s, {overdue} overdue)" if oldest is not None else ""))  # fmt: skip
        for k, v in sorted(counters.items()):
            _emit(f"  {k}: {v}")
    return EXIT_OK
