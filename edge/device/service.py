"""The appliance as systemd runs it: every component wired around the camera loop.

    keys → audit log → alert publisher (spool + MQTT) → watchlist store + sync → pipeline
    → run_loop (watchdog pings per processed frame) → deployment record, final checkpoint, flush

Components talk through the hooks they expose; nothing here knows a wire format. Stopping is
ordered so that nothing is lost: the loop ends, the deployment record and the stop record are
written (and spooled), the spool gets a few seconds to drain, and what is left stays spooled for
the next start.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.core.config import Config
from edge.core.errors import InputError
from edge.core.types import Counters, MatchEvent
from edge.device.camera.base import FrameSource

log = logging.getLogger("lfr_edge.service")

FLUSH_AT_STOP_S = 3.0


class _Fanout:
    """The pipeline's one sink: audit record first (the log is the accountability), then the alert."""

    def __init__(self, *sinks: Any, audit: Any = None) -> None:
        self.sinks = sinks
        self.audit = audit

    def on_match(self, event: MatchEvent) -> None:
        for s in self.sinks:
            alert_id = s.on_match(event)
            if self.audit is not None and isinstance(alert_id, str):
                self.audit.alert_event(alert_id, event)


@dataclass
class ServiceResult:
    counters: Counters
    status: dict[str, Any]
    deployment: dict[str, Any] | None


def ensure_data_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def serve(
    cfg: Config,
    source: str | FrameSource | None = None,
    *,
    max_frames: int | None = None,
    stop: threading.Event | None = None,
    extra_sinks: tuple[Any, ...] = (),
    notifier: Any = None,
) -> ServiceResult:
    """Run the whole appliance until `stop` is set, the replay ends, or `max_frames` frames."""
    from edge.core.keys import load_device_keys
    from edge.device.audit.runtime import ServiceAudit
    from edge.device.camera.factory import make_source
    from edge.device.pipeline import Pipeline, build_stages, run_loop
    from edge.device.publisher import AlertPublisher
    from edge.device.sdnotify import Notifier
    from edge.device.watchlist.store import WatchlistHolder, store_from_config
    from edge.device.watchlist.sync import sync_from_config

    stop = stop or threading.Event()
    notifier = notifier or Notifier()
    # A bad URI fails here, before models load.
    src = source if isinstance(source, FrameSource) else make_source(source or cfg.camera.source, cfg.camera)
    keys_dir = cfg.device.keys_dir
    if not (keys_dir.is_dir() and any(keys_dir.iterdir())):
        raise InputError(f"device.keys_dir: no device keys in {keys_dir}; create them with lfr-edge keys init --dir {keys_dir}")
    keys = load_device_keys(keys_dir)
    ensure_data_dir(cfg.device.data_dir)

    holder = WatchlistHolder()
    stages = build_stages(cfg)
    pipeline_box: list[Pipeline] = []

    def counters() -> Counters:
        return pipeline_box[0].counters if pipeline_box else Counters()

    audit = ServiceAudit(cfg, keys=keys, counters=counters, watchlist=holder.current)

    policy = stages.policy

    def status() -> dict[str, Any]:
        base = pipeline_box[0].status() if pipeline_box else {"watchlist": "starting"}
        # "watchlist" stays the pipeline's one-word state ("active", "watchlist expired", ...).
        wl = holder.current()
        # The expected false-alert rate is stated for the list in force (or the reference list).
        size = len(wl.subjects) if wl is not None else policy.scoring.reference_list_size
        return {**base, "watchlist_detail": store.status(), "matching": policy.describe(size)}

    def overdue(alert_id: str, age_s: float) -> None:
        # Audited once per alert (the spool remembers); the alert stays spooled and is still re-sent.
        audit.append("alert_unacknowledged", {"alert_id": alert_id, "age_s": round(age_s, 1)})

    publisher = AlertPublisher.from_config(
        cfg, status_provider=status, on_drop=audit.spool_drop_hook(), keys=keys, on_overdue=overdue
    )
    audit.attach_spool(publisher.enqueue)
    store = store_from_config(cfg, keys, holder=holder, on_event=audit.watchlist_hook())
    try:
        store.load()
    except InputError as e:  # a stored list that cannot be opened: run, count faces, alert nobody
        log.error("installed watchlist not usable: %s", e)
    sync = sync_from_config(cfg, store, publisher.link)

    pipeline = Pipeline(cfg, stages, holder, _Fanout(publisher, *extra_sinks, audit=audit))
    pipeline_box.append(pipeline)
    audit.start(holder.current())
    publisher.start()
    sync.start()
    notifier.ready(f"processing {src.name}")
    ids = stages.vision.model_ids
    log.info("camera loop started",
             extra={"device": cfg.device.id, "source": src.name, "detector": ids.detector, "embedder": ids.embedder})
    result_counters: Counters | None = None
    deployment: dict[str, Any] | None = None
    try:
        result_counters = run_loop(pipeline, src, notifier.frame_processed, stop, max_frames)
    finally:
        notifier.stopping()
        sync.stop()
        deployment = audit.stop(result_counters or pipeline.counters, holder.current())
        # Only worth waiting for while the broker is there; otherwise the spool keeps them for next start.
        if not (publisher.link.connected and publisher.flush(FLUSH_AT_STOP_S)) and publisher.spool.pending():
            log.warning("stopping with alerts still spooled; they are sent at next start",
                        extra={"pending": publisher.spool.pending()})
        publisher.stop()
        notifier.close()
    return ServiceResult(result_counters, pipeline.status(), deployment)
