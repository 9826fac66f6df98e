"""Several cameras in one appliance: one capture + Pipeline loop per camera, each in its own thread.

What the cameras share: the watchlist holder (one list in force, swapped for all at once), the
matching policy, the alert sink (behind one lock, so the publisher and the audit log see one match
at a time) and the model files. What each camera has: its own interpreters. A TFLite interpreter
is not safe to invoke from two threads at once, so one shared set would need a lock around every
detect and embed, serialising the loops' model time. On a heavily loaded 2-core x86 the two were
within the noise of each other (docs/BENCHMARKS.md, "Two cameras"); a set per camera costs about 30 MB
more RSS and cannot be wrong about thread safety.

The watchdog is pinged only while *every* running camera makes progress: one stalled camera
stops the pings and systemd restarts the service, as with one camera. A camera whose replay has
ended no longer counts.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge.core.config import CameraSpec, Config
from edge.core.errors import InputError
from edge.core.types import Counters, MatchEvent
from edge.device.camera.base import FrameSource
from edge.device.camera.factory import make_source
from edge.device.pipeline import EventSink, FrameObserver, Pipeline, Stages, build_stages, run_loop
from edge.device.status import CameraState, CameraStatus
from edge.device.watchlist.store import WatchlistHolder

log = logging.getLogger("lfr_edge.cameras")


class _LockedSink:
    """The shared sink, one match at a time (the loops call it from their own threads)."""

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()

    def on_match(self, event: MatchEvent) -> Any:
        with self._lock:
            return self._sink.on_match(event)


class AllProgressing:
    """Calls `ping` only when every live camera has processed a frame since the previous call."""

    def __init__(self, names: Sequence[str], ping: Callable[[], None] | None) -> None:
        self._ping = ping
        self._live = set(names)
        self._waiting = set(names)
        self._lock = threading.Lock()

    def progressed(self, name: str) -> None:
        with self._lock:
            self._waiting.discard(name)
            fire = not self._waiting and bool(self._live)
            if fire:
                self._waiting = set(self._live)
        if fire and self._ping is not None:
            self._ping()

    def ended(self, name: str) -> None:
        with self._lock:
            self._live.discard(name)
            self._waiting.discard(name)


@dataclass
class _Camera:
    spec: CameraSpec
    cfg: Config  # the device config as this camera's loop sees it (Config.for_camera)
    source: FrameSource
    pipeline: Pipeline
    state: CameraState = CameraState.STARTING
    last_progress: float = 0.0
    error: BaseException | None = None


class CameraSet:
    """Every configured camera, built (sources checked, models loaded) but not yet running."""

    def __init__(
        self,
        cfg: Config,
        holder: WatchlistHolder,
        sink: EventSink,
        *,
        sources: dict[str, str | FrameSource] | None = None,
        observer: Callable[[str], FrameObserver | None] | None = None,
        stages: Callable[[Config], Stages] = build_stages,
    ) -> None:
        """`sources` replaces named cameras' sources (`run --source`, the benchmark); `observer`
        gives each camera's loop its observer by name."""
        specs = cfg.camera_specs()
        unknown = set(sources or {}) - {s.name for s in specs}
        if unknown:
            raise InputError(f"no camera named {', '.join(sorted(unknown))} (cameras: {', '.join(s.name for s in specs)})")
        shared = _LockedSink(sink)
        self.cameras: list[_Camera] = []
        for spec in specs:
            ccfg = cfg.for_camera(spec)
            given = (sources or {}).get(spec.name)
            # A bad URI fails here, before any model loads.
            src = given if isinstance(given, FrameSource) else make_source(given or spec.camera.source, spec.camera)
            self.cameras.append(_Camera(spec, ccfg, src, Pipeline(ccfg, stages(ccfg), holder, shared, camera=spec.name,
                                                                   observer=observer(spec.name) if observer else None)))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.spec.name for c in self.cameras)

    @property
    def first(self) -> Pipeline:
        return self.cameras[0].pipeline

    def run(
        self,
        stop: threading.Event,
        on_progress: Callable[[], None] | None = None,
        max_frames: int | None = None,
    ) -> Counters:
        """Run every camera until each replay ends, `max_frames` frames each, or `stop`. The first
        camera to fail stops the others, and its error is raised once all have stopped."""
        gate = AllProgressing(self.names, on_progress)
        threads = []
        for cam in self.cameras:
            th = threading.Thread(target=self._one, args=(cam, gate, stop, max_frames), name=f"camera-{cam.spec.name}",
                                  daemon=True)
            th.start()
            threads.append(th)
        try:
            for th in threads:
                while th.is_alive():
                    th.join(0.5)
        except BaseException:  # KeyboardInterrupt in the main thread: stop every loop first
            stop.set()
            for th in threads:
                th.join()
            raise
        for cam in self.cameras:
            if cam.error is not None:
                raise cam.error
        return self.counters()

    def _one(self, cam: _Camera, gate: AllProgressing, stop: threading.Event, max_frames: int | None) -> None:
        name = cam.spec.name

        def progressed() -> None:
            cam.last_progress = time.monotonic()
            cam.state = CameraState.RUNNING
            gate.progressed(name)

        try:
            run_loop(cam.pipeline, cam.source, progressed, stop, max_frames)
            cam.state = CameraState.ENDED
        except BaseException as e:
            cam.state, cam.error = CameraState.FAILED, e
            log.error("camera %s failed: %s", name, e)
            stop.set()  # one camera down takes the service down, so systemd restarts it whole
        finally:
            gate.ended(name)

    # -- status ----------------------------------------------------------------------------------
    def counters(self) -> Counters:
        """The cameras' counters added up (what the audit log's deployment record counts)."""
        return sum((cam.pipeline.counters for cam in self.cameras), Counters())

    def statuses(self) -> tuple[CameraStatus, ...]:
        """Each camera's counts (its pipeline's) and the state of its loop."""
        now = time.monotonic()
        out = []
        for cam in self.cameras:
            state = cam.state
            if state is CameraState.RUNNING and now - cam.last_progress > cam.spec.camera.stall_timeout_s:
                state = CameraState.STALLED
            out.append(dataclasses.replace(cam.pipeline.status(), state=state))
        return tuple(out)

    @property
    def pipelines(self) -> tuple[Pipeline, ...]:
        return tuple(c.pipeline for c in self.cameras)

    @property
    def source_names(self) -> str:
        return ", ".join(f"{c.spec.name}={c.source.name}" for c in self.cameras)
