"""The running appliance as one object: what `lfr-edge run` (and so systemd) runs.

    app = Appliance(cfg, source)        # bad source URI or missing device keys fail here, before models load
    app.run()                           # until app.stop(), the replay ends or max_frames
    app.status() -> Status              # typed parts, one owner each (edge.device.status)
    app.install_watchlist(bundle, source) -> InstallOutcome
    app.wipe(source) -> WipeOutcome     # in memory and on disk before it returns
    app.subscribe(fn)                   # typed ApplianceEvents: started, watchlist changes, stopped

Inside `run()` every component is wired around the camera loop:

    control socket → keys → audit log → alert publisher (spool + MQTT) → watchlist store + sync
    → pipeline → run_loop (watchdog pings per processed frame) → deployment record, final checkpoint, flush

The control socket (edge.device.control) is how `lfr-edge status`, `watchlist install/status` and
`watchlist wipe --local` reach this object from another process; it is bound first, so a command
either finds this service or runs before it loads the stored list. Stopping is ordered so that
nothing is lost: the loop ends, the control socket closes, the deployment record and the stop record
are written (and spooled), the spool gets a few seconds to drain, and what is left stays spooled for
the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from edge.core.config import Config, sealing_problem
from edge.core.errors import EdgeError, InputError
from edge.core.keys import DeviceKeys
from edge.core.types import Counters, MatchEvent
from edge.device.camera.base import FrameSource
from edge.device.control import Command, ControlRequest, ControlResponse, ControlServer
from edge.device.pipeline import EventSink
from edge.device.sdnotify import Notifier
from edge.device.status import (
    ServiceState,
    Status,
    WatchlistState,
    WatchlistStatus,
    matching_status,
)

if TYPE_CHECKING:
    from edge.core.watchlist.policy import MatchingPolicy
    from edge.device.bundle_outcome import BundleOutcomes
    from edge.device.cameras import CameraSet
    from edge.device.publisher import AlertPublisher
    from edge.device.watchlist.store import WatchlistStore

log = logging.getLogger("lfr_edge.service")

FLUSH_AT_STOP_S = 3.0
READY_WAIT_S = 90.0  # a control request during start-up waits this long for the models to load (the CLI waits 120 s)


# --------------------------------------------------------------------------- typed surface


class EventKind(Enum):
    STARTED = "started"
    WATCHLIST_INSTALLED = "watchlist_installed"
    WATCHLIST_REFUSED = "watchlist_refused"
    WATCHLIST_WIPED = "watchlist_wiped"
    WATCHLIST_EXPIRED = "watchlist_expired"
    STOPPED = "stopped"


# The store's event names (which the audit log records as they are) → the appliance's events.
_STORE_EVENTS = {
    "installed": EventKind.WATCHLIST_INSTALLED,
    "refused": EventKind.WATCHLIST_REFUSED,
    "wiped": EventKind.WATCHLIST_WIPED,
    "expired": EventKind.WATCHLIST_EXPIRED,
}


@dataclass(frozen=True, slots=True)
class ApplianceEvent:
    """Something the appliance reports: counts and versions only, never who."""

    kind: EventKind
    source: str = ""  # who asked: "cli:…", "mqtt", "inbox:…", "mqtt-command", …
    watchlist_version: int | None = None
    detail: str = ""  # a refusal's reason


@dataclass(frozen=True, slots=True)
class InstallOutcome:
    watchlist: WatchlistStatus  # the list now in force


@dataclass(frozen=True, slots=True)
class WipeOutcome:
    removed: bool  # a list (in memory or on disk) or its storage key was there and is gone
    wiped_version: int | None  # the version that was in force
    watchlist: WatchlistStatus  # now: state none


@dataclass(frozen=True, slots=True)
class ServiceResult:
    counters: Counters
    status: Status
    deployment: dict[str, Any] | None


class AlertSink(Protocol):
    """The alert publisher as the fan-out sees it: durable on return, and says which alert it raised."""

    def on_match(self, event: MatchEvent) -> str: ...


class AlertAudit(Protocol):
    def alert_event(self, alert_id: str, event: MatchEvent) -> None: ...


class Fanout:
    """The pipeline's one sink: the alert (its id goes to the audit log, the accountability), then
    any extra local sinks (JSON lines for replays and tests)."""

    def __init__(self, alerts: AlertSink, extra: tuple[EventSink, ...] = (), audit: AlertAudit | None = None) -> None:
        self.alerts = alerts
        self.extra = extra
        self.audit = audit

    def on_match(self, event: MatchEvent) -> None:
        alert_id = self.alerts.on_match(event)
        if self.audit is not None:
            self.audit.alert_event(alert_id, event)
        for s in self.extra:
            s.on_match(event)


def ensure_data_dir(cfg: Config) -> None:
    cfg.device.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)


# --------------------------------------------------------------------------- the appliance


class Appliance:
    def __init__(
        self,
        cfg: Config,
        source: str | FrameSource | None = None,
        *,
        stop: threading.Event | None = None,
        notifier: Notifier | None = None,
        extra_sinks: tuple[EventSink, ...] = (),
        max_frames: int | None = None,
    ) -> None:
        from edge.core.keys import load_device_keys
        from edge.device.camera.factory import make_source

        if unsealed := sealing_problem(cfg.alerts.seal_to, cfg.alerts.allow_unsealed):
            raise InputError(unsealed)  # what `run` and check-config refuse, for callers of serve() too
        self.cfg = cfg
        self._stop = stop or threading.Event()
        self.notifier = notifier or Notifier()
        self.extra_sinks = extra_sinks
        self.max_frames = max_frames
        specs = cfg.camera_specs()
        if source is not None and len(specs) > 1:
            raise InputError(f"--source replaces the one camera's source; this config has {len(specs)} cameras (cameras:)")
        # A bad URI fails here, before models load.
        self.sources: dict[str, str | FrameSource] = {
            spec.name: source if isinstance(source, FrameSource) else make_source(source or spec.camera.source, spec.camera)
            for spec in specs
        }
        keys_dir = cfg.device.keys_dir
        if not (keys_dir.is_dir() and any(keys_dir.iterdir())):
            raise InputError(f"device.keys_dir: no device keys in {keys_dir}; create them with lfr-edge keys init --dir {keys_dir}")
        self.keys: DeviceKeys = load_device_keys(keys_dir)
        self._started = time.monotonic()
        self._state = ServiceState.STARTING
        self._ready = threading.Event()
        self._listeners: list[Callable[[ApplianceEvent], None]] = []
        self._listeners_lock = threading.Lock()
        # What run() built; None until then (status() says "starting").
        self._parts: _Parts | None = None
        self._load_error: InputError | None = None  # why the stored list did not open at start

    # ----------------------------------------------------------------------- events

    def subscribe(self, fn: Callable[[ApplianceEvent], None]) -> None:
        with self._listeners_lock:
            self._listeners.append(fn)

    def _emit(self, event: ApplianceEvent) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(event)
            except Exception:  # a listener must never stop an install, a wipe or the loop
                log.exception("appliance event listener failed")

    def _store_event(self, kind: str, fields: dict[str, Any]) -> None:
        ek = _STORE_EVENTS.get(kind)
        if ek is None:
            return
        version = fields.get("version")
        self._emit(
            ApplianceEvent(
                ek,
                source=str(fields.get("source", "")),
                watchlist_version=version if isinstance(version, int) else None,
                detail=str(fields.get("reason", "")),
            )
        )

    # ----------------------------------------------------------------------- surface

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> Status:
        p = self._parts
        wl = self._watchlist_status(p) if p is not None else None
        return Status.of_device(
            self.cfg,
            self._state,
            time.monotonic() - self._started,
            cameras=p.cameras.statuses() if p is not None else (),
            watchlist=wl,
            # The expected false-alert rate is stated for the list in force (or the reference list).
            matching=matching_status(p.policy, p.policy.scoring.reference_list_size if wl.subjects is None else wl.subjects)
            if p is not None and wl is not None
            else None,
            alerts=p.publisher.delivery_status() if p is not None else None,
            mqtt=p.publisher.link_status() if p is not None else None,
            last_bundle=p.outcomes.last() if p is not None else None,
        )

    def _watchlist_status(self, p: _Parts) -> WatchlistStatus:
        wl = p.store.status()
        # The stored list that would not open at start is still there and still not in force: say so,
        # not "none" (an install over it or a wipe ends this).
        if wl.state is WatchlistState.NONE and self._load_error is not None and p.store.path.exists():
            return WatchlistStatus.unusable(self._load_error)
        return wl

    def install_watchlist(self, bundle: bytes, source: str) -> InstallOutcome:
        """Verify, store and put in force at the next frame; BundleError (the list in force unchanged) on refusal."""
        p = self._require_parts()
        wl = p.store.install(bundle, source=source)
        return InstallOutcome(WatchlistStatus.of(wl))

    def wipe(self, source: str) -> WipeOutcome:
        """Out of memory (no frame started after this returns can match) and off the disk (file
        deleted, storage key destroyed) before returning."""
        p = self._require_parts()
        before = p.store.holder.current()
        removed = p.store.wipe(source=source)
        for pl in p.cameras.pipelines:
            pl.frame_boundary()  # the frame that was running with the old list has finished
        return WipeOutcome(removed, before.version if before is not None else None, self._watchlist_status(p))

    def _require_parts(self) -> _Parts:
        if not self._ready.wait(READY_WAIT_S) or self._parts is None:
            raise EdgeError("the service is still starting (models loading); try again")
        return self._parts

    # ----------------------------------------------------------------------- control channel

    def handle(self, request: ControlRequest) -> ControlResponse:
        """One control request (edge.device.control) → the typed surface → one response."""
        try:
            if request.command is Command.STATUS:
                return ControlResponse(ok=True, status=self.status().to_json())
            if request.command is Command.INSTALL:
                assert request.bundle is not None  # ControlRequest.decode guarantees it
                out = self.install_watchlist(request.bundle, request.source)
                return ControlResponse(ok=True, watchlist=out.watchlist.to_json())
            wiped = self.wipe(request.source)
            return ControlResponse(ok=True, wiped=wiped.removed, watchlist=wiped.watchlist.to_json())
        except EdgeError as e:
            return ControlResponse.failure(str(e), e.exit_code)

    # ----------------------------------------------------------------------- run

    def run(self) -> ServiceResult:
        """Run the whole appliance until stop(), the replay ends, or max_frames frames."""
        from edge.device.control import max_request_bytes, socket_path

        cfg = self.cfg
        ensure_data_dir(cfg)
        control = ControlServer(socket_path(cfg), self.handle, max_request_bytes(cfg)).start()
        try:
            return self._run(control)
        finally:
            control.close()
            self._ready.set()  # nobody waits for a start that is over

    def _run(self, control: ControlServer) -> ServiceResult:
        from edge.core.watchlist.policy import policy_for
        from edge.device.audit.runtime import ServiceAudit
        from edge.device.availability import Availability
        from edge.device.bundle_outcome import BundleOutcomes
        from edge.device.cameras import CameraSet
        from edge.device.publisher import AlertPublisher
        from edge.device.watchlist.store import WatchlistHolder, store_from_config
        from edge.device.watchlist.sync import sync_from_config

        cfg = self.cfg
        holder = WatchlistHolder()
        policy = policy_for(cfg)  # a threshold below the floor fails here, before any model loads
        cameras_box: list[CameraSet] = []

        def counters() -> Counters:
            return cameras_box[0].counters() if cameras_box else Counters()

        audit = ServiceAudit(cfg, keys=self.keys, counters=counters, watchlist=holder.current)
        def overdue(alert_id: str, age_s: float) -> None:
            # Audited once per alert (the spool remembers); the alert stays spooled and is still re-sent.
            audit.append("alert_unacknowledged", {"alert_id": alert_id, "age_s": round(age_s, 1)})

        publisher = AlertPublisher.from_config(
            cfg, status_provider=self.status, on_drop=audit.spool_drop_hook(), keys=self.keys, on_overdue=overdue
        )
        audit.attach_spool(publisher.enqueue)
        audit_hook = audit.watchlist_hook()

        def on_store_event(kind: str, fields: dict[str, Any]) -> None:
            audit_hook(kind, fields)  # the accountability first
            self._store_event(kind, fields)

        # The last install or refusal goes into the status, republished at once (watchlist publish --wait).
        outcomes = BundleOutcomes(on_store_event, publisher.request_status)
        store = store_from_config(cfg, self.keys, holder=holder, on_event=outcomes.hook)
        try:
            store.load()
        except InputError as e:  # a stored list that cannot be opened: run, count faces, alert nobody
            log.error("installed watchlist not usable: %s", e)
            self._load_error = e
        if not cfg.watchlist.at_rest:
            log.info("watchlist held in memory only (watchlist.at_rest: false): none until the broker delivers the retained bundle")
        sync = sync_from_config(cfg, store, publisher.link)
        cameras = CameraSet(cfg, holder, Fanout(publisher, self.extra_sinks, audit), sources=self.sources)
        cameras_box.append(cameras)
        self._parts = _Parts(store, publisher, policy, cameras, outcomes)
        audit.start(holder.current())
        # Online before the link starts: the heartbeat sent on connect must not say "starting".
        self._state = ServiceState.ONLINE
        publisher.start()
        availability = Availability(cfg).start()
        sync.start()
        self._ready.set()
        names = cameras.source_names
        self.notifier.ready(f"processing {names}")
        ids = cameras.first.vision.model_ids
        log.info("camera loops started",
                 extra={"device": cfg.device.id, "source": names, "detector": ids.detector, "embedder": ids.embedder})
        self._emit(ApplianceEvent(EventKind.STARTED, source=names))
        result_counters: Counters | None = None
        deployment: dict[str, Any] | None = None
        try:
            result_counters = cameras.run(self._stop, self.notifier.frame_processed, self.max_frames)
        finally:
            self._state = ServiceState.STOPPING
            self.notifier.stopping()
            control.close()  # from here on a command acts on the store directly
            sync.stop()
            deployment = audit.stop(result_counters or cameras.counters(), holder.current())
            # Only worth waiting for while the broker is there; otherwise the spool keeps them for next start.
            if not (publisher.link.connected and publisher.flush(FLUSH_AT_STOP_S)) and publisher.spool.pending():
                log.warning("stopping with alerts still spooled; they are sent at next start",
                            extra={"pending": publisher.spool.pending()})
            self._state = ServiceState.STOPPED
            final = self.status()
            publisher.stop()
            availability.stop()
            self.notifier.close()
            self._emit(ApplianceEvent(EventKind.STOPPED, source=names))
        return ServiceResult(result_counters, final, deployment)


@dataclass(frozen=True, slots=True)
class _Parts:
    """What run() built and the typed surface reads."""

    store: WatchlistStore
    publisher: AlertPublisher
    policy: MatchingPolicy
    cameras: CameraSet
    outcomes: BundleOutcomes
