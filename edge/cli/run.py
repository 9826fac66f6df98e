"""`lfr-edge run`: the service's main job — the camera loop until stopped (SIGTERM/SIGINT) or EOF."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from edge.cli.options import add_config_option, device_config
from edge.core.config import load_config
from edge.core.config_check import check_device
from edge.core.errors import EXIT_OK, ConfigError, InputError

log = logging.getLogger("lfr_edge.run")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the camera loop (the service's main job)")
    add_config_option(p)
    p.add_argument("--source", help="camera source URI overriding camera.source (e.g. file:clip.mp4)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N processed frames")
    p.add_argument(
        "--events", default="none", help="also write match events as JSON lines to FILE ('-': stdout; default none)"
    )
    p.set_defaults(handler=_run)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM (systemd stop) and SIGINT end the loop at the next frame boundary."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _run(args: argparse.Namespace) -> int:
    from edge.core.logsetup import setup_logging
    from edge.device.appliance import Appliance
    from edge.device.pipeline_sinks import JsonlSink

    path = device_config(args)
    report = check_device(path)  # exactly what check-config reports, before anything starts
    if not report.ok:
        raise ConfigError(report.errors)
    cfg = load_config(path)
    setup_logging(cfg.logging.level, cfg.logging.format)
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max-frames: {args.max_frames} must be >= 1")
    stop = threading.Event()
    # Match events always go to the alert publisher (MQTT, through the spool); --events adds a
    # local JSON-lines copy for replays and tests. The service itself runs with --events none.
    extra = () if args.events == "none" else (JsonlSink(None if args.events == "-" else args.events),)
    try:
        with stop_on_signals(stop):
            app = Appliance(cfg, args.source, max_frames=args.max_frames, stop=stop, extra_sinks=extra)
            result = app.run()
    finally:
        for sink in extra:
            sink.close()
    c = result.counters
    log.info("camera loop stopped", extra={"frames": c.frames, "alerts": c.matches})
    print(json.dumps({"stopped": True, **result.status.to_json()}), flush=True)  # the summary is data: stdout
    return EXIT_OK
