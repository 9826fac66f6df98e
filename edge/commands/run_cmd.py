"""`lfr-edge run`: the service's main job — the camera loop until stopped (SIGTERM/SIGINT) or EOF."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from edge.config import Config, config_path, load_config
from edge.errors import EXIT_OK, InputError

if TYPE_CHECKING:  # the CLI imports every command module; heavy imports wait until `run` runs
    from edge.watchlist.model import Watchlist
    from edge.watchlist.store import WatchlistHolder

log = logging.getLogger("lfr_edge.run")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the camera loop (the service's main job)")
    p.add_argument("--config", help="config file (default: $LFR_EDGE_CONFIG or /etc/lfr-edge/lfr-edge.yaml)")
    p.add_argument("--source", help="camera source URI overriding camera.source (e.g. file:clip.mp4)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N processed frames")
    p.add_argument("--events", default="-", help="JSON-lines file for match events (default: stdout)")
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


def load_installed_watchlist(cfg: Config, holder: WatchlistHolder) -> Watchlist | None:
    """Put the list installed on this device in force (decrypted into memory only), if any.

    A stored list that cannot be opened is reported and the loop runs without one (no alert can
    be raised, the status says so) rather than restart-looping the service.
    """
    if not cfg.watchlist_store.exists():
        log.warning("no watchlist installed at %s: faces are counted, nobody can match", cfg.watchlist_store)
        return None
    from edge.watchlist.store import store_from_config

    try:
        return store_from_config(cfg, holder=holder).load()
    except InputError as e:
        log.error("installed watchlist not usable: %s", e)
        return None


def _run(args: argparse.Namespace) -> int:
    from edge.logsetup import setup_logging
    from edge.pipeline import Pipeline, build_stages, run_loop
    from edge.pipeline_sinks import JsonlSink
    from edge.sdnotify import Notifier
    from edge.watchlist.store import WatchlistHolder

    cfg = load_config(config_path(args.config))
    setup_logging(cfg.logging.level, cfg.logging.format)
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max-frames: {args.max_frames} must be >= 1")
    source = args.source or cfg.camera.source
    from edge.camera.factory import make_source

    src = make_source(source, cfg.camera)  # a bad URI fails here, before models load
    stop = threading.Event()
    notifier = Notifier()
    sink = JsonlSink(None if args.events == "-" else args.events)
    try:
        with stop_on_signals(stop):
            holder = WatchlistHolder()
            load_installed_watchlist(cfg, holder)
            pipeline = Pipeline(cfg, build_stages(cfg), holder, sink)
            notifier.ready(f"processing {src.name}")
            log.info("camera loop started", extra={"source": src.name, **pipeline.stages.model_ids})
            counters = run_loop(
                cfg, src, sink, notifier.frame_processed, stop, args.max_frames, pipeline=pipeline
            )
            notifier.stopping()
            summary = pipeline.status()
    finally:
        sink.close()
        notifier.close()
    log.info("camera loop stopped", extra={"frames": counters.frames, "alerts": counters.matches})
    print(json.dumps({"stopped": True, **summary}), file=sys.stderr)
    return EXIT_OK
