"""The camera loop: frame → detect → align → quality → track → embed → match → MatchEvent.

One `Pipeline` holds the per-process state (models, tracker, cooldowns, counters) and processes
one frame at a time; `run_loop` feeds it from a LatestFrameGrabber until EOF, `max_frames` or a
stop request. Others hook in without touching the loop: `on_frame_processed` (the systemd
watchdog: called only after a frame was really processed, so a stalled camera stops the pings),
an `EventSink` (the MQTT publisher, or JSON lines), a `FrameObserver` (whoever measures the loop:
stage times and each frame's detections, handed over and not kept) and the shared
WatchlistHolder (edge.device.watchlist.store), whose swap() puts a new list in force at the next
frame.

Privacy: chips and embeddings exist only in per-frame buffers and in live tracks; a track's
embeddings are wiped when it ends, and only counts survive it. A JPEG crop is made only for a
match.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from edge.core.config import Config
from edge.core.types import F32, F64, U8, Counters, Detections, Frame, Match, MatchEvent
from edge.core.vision.quality import count_rejections
from edge.core.vision.stack import StackUse, VisionStack, build_vision_stack
from edge.core.vision.track import Track, Tracker
from edge.core.watchlist.match import Matcher
from edge.core.watchlist.policy import MatchingPolicy
from edge.device.camera.base import FrameSource
from edge.device.camera.factory import make_source
from edge.device.camera.grabber import LatestFrameGrabber
from edge.device.status import CameraStatus
from edge.device.watchlist.store import WatchlistHolder

log = logging.getLogger("lfr_edge.pipeline")

STAGES = ("capture", "detect", "align", "quality", "embed", "match")
_FPS_WINDOW = 32


class EventSink(Protocol):
    def on_match(self, event: MatchEvent) -> None: ...


@dataclass(frozen=True, slots=True)
class FrameReport:
    """What one processed frame gave, for whoever measures the loop (the benchmark, tests).

    Handed to the observer and dropped: the pipeline keeps none of it, so no detection outlives
    its frame through this path."""

    frame: Frame
    stage_ms: F64  # (len(STAGES),) milliseconds per stage, capture = the wait for the frame
    detections: Detections
    tracks: list[Track]
    embedded: int


class FrameObserver(Protocol):
    def on_frame(self, report: FrameReport) -> None: ...


@dataclass(frozen=True, slots=True)
class Stages:
    """The camera's vision stack (edge.core.vision.stack) and the matching policy in force."""

    vision: VisionStack
    policy: MatchingPolicy


class Pipeline:
    def __init__(
        self,
        cfg: Config,
        stages: Stages,
        watchlists: WatchlistHolder,
        sink: EventSink,
        camera: str | None = None,
        observer: FrameObserver | None = None,
    ) -> None:
        self.cfg = cfg
        self.stages = stages
        self.vision = stages.vision
        self.watchlists = watchlists
        self.sink = sink
        self.observer = observer
        self.camera = camera or cfg.device.camera_name
        t = cfg.tracking
        self.tracker = Tracker(
            t.iou_threshold, t.max_centre_dist, t.max_missed_frames, t.best_k, t.max_tracks, dim=stages.vision.embed_dim
        )
        self.counters = Counters()
        self.suppressed = 0  # matches silenced by the per-subject cooldown
        # Per-subject time of the last alert; at most one entry per watchlist subject, pruned by age.
        self._last_alert: dict[str, float] = {}
        self._times = np.zeros(_FPS_WINDOW, np.float64)
        self._n_times = 0
        # Held for a whole frame, so that a wipe can wait for the frame that was running with the
        # old list (frame_boundary) and no alert from a wiped list follows the wipe's return.
        self._frame_lock = threading.Lock()

    # -- one frame -----------------------------------------------------------------------------
    def process(self, frame: Frame, wait_ms: float = 0.0) -> None:
        """One frame through every stage; `wait_ms` (time spent waiting for it) is only reported."""
        with self._frame_lock:
            self._process(frame, wait_ms)

    def frame_boundary(self) -> None:
        """Return once the frame being processed (if any) has finished."""
        with self._frame_lock:
            pass

    def _process(self, frame: Frame, wait_ms: float) -> None:
        ms = np.zeros(len(STAGES), np.float64)
        ms[0] = wait_ms
        img = frame.image
        c = self.counters
        pc = time.perf_counter

        st = self.vision
        full = st.detector_light is None or (self.tracker.frame_idx + 1) % st.tiles_every_n == 0
        t0 = pc()
        dets = (st.detector if full or st.detector_light is None else st.detector_light).detect(img)
        t1 = pc()
        ms[1] = (t1 - t0) * 1e3
        n = len(dets)
        c.frames += 1
        c.faces_seen += n

        tracks, ended = self.tracker.update(dets.boxes)
        for tr in ended:
            self._end(tr)
        embedded = self._faces(frame, dets, tracks, ms) if n else 0
        self._tick()
        if self.observer is not None:
            self.observer.on_frame(FrameReport(frame, ms, dets, tracks, embedded))

    def _faces(self, frame: Frame, dets: Detections, tracks: list[Track], ms: F64) -> int:
        """Gate, embed and match this frame's faces; returns how many were embedded."""
        pc = time.perf_counter
        vs = self.vision
        t0 = pc()
        # Every face is judged, but only on its chip's face region (all the blur gate reads);
        # whole chips are cut below for the few faces that are embedded this frame.
        mats = vs.aligner.matrices(dets.keypoints)
        regions = vs.gate_regions(frame.image, mats)
        t1 = pc()
        quality = vs.quality.assess(dets.keypoints, dets.scores, regions)
        t2 = pc()
        ms[2] = (t1 - t0) * 1e3
        ms[3] = (t2 - t1) * 1e3
        count_rejections(quality, into=self.counters.rejections)

        matcher = self._matcher()
        if matcher is None or matcher.watchlist.expired(frame.t_wall) or not matcher.watchlist.subjects:
            return 0  # nothing to match against: compute no embedding at all
        every_n = self.cfg.tracking.embed_every_n
        fidx = self.tracker.frame_idx
        sel = [
            i
            for i, (q, tr) in enumerate(zip(quality, tracks, strict=True))
            if q.accepted and tr.wants_embedding(q.rank, fidx, every_n)
        ]
        if not sel:
            return 0
        t3 = pc()
        chips, _ = vs.cut_chips(frame.image, dets.keypoints[sel], mats[sel])
        t4 = pc()
        vecs = vs.embedder.embed(chips)
        t5 = pc()
        ms[2] += (t4 - t3) * 1e3
        ms[4] = (t5 - t4) * 1e3
        self.counters.embeddings += len(sel)
        for j, i in enumerate(sel):
            tracks[i].add_embedding(vecs[j], quality[i].rank, fidx)
        probes = np.stack([tracks[i].fused() for i in sel])
        each_view = self.cfg.tracking.match_each_view
        for k, i in enumerate(sel):
            tr = tracks[i]
            m, fused_n = match_view(matcher, probes[k], tr.n_kept, vecs[k] if each_view else None, frame.t_wall)
            if m is not None:
                self._on_match(frame, dets, i, tr, m, matcher.watchlist.version, fused_n)
        ms[5] = (pc() - t5) * 1e3
        return len(sel)

    def _matcher(self) -> Matcher | None:
        return self.watchlists.matcher(*self.stages.policy.matcher_args())

    def _on_match(
        self, frame: Frame, dets: Detections, i: int, tr: Track, m: Match, version: int, fused_n: int
    ) -> None:
        sid = m.subject.subject_id
        if sid in tr.alerted:
            return  # one event per (track, subject)
        tr.alerted.add(sid)
        now = frame.t_mono
        last = self._last_alert.get(sid)
        if last is not None and now - last < self.cfg.matching.cooldown_s:
            self.suppressed += 1
            return
        self._last_alert[sid] = now
        self._prune_cooldowns(now)
        box = dets.boxes[i]
        crop = self._crop_jpeg(frame.image, box) if self.cfg.alerts.include_crop else None
        event = MatchEvent(
            match=m,
            track_id=tr.id,
            frame_seq=frame.seq,
            t_wall=frame.t_wall,
            camera=self.camera,
            bbox=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            frames_fused=fused_n,  # views in the probe that matched (1: the new view alone)
            watchlist_version=version,
            crop_jpeg=crop,
        )
        self.counters.matches += 1
        log.info("match raised: track %d score %.3f (subject in the alert only)", tr.id, m.score)
        self.sink.on_match(event)

    def _prune_cooldowns(self, now: float) -> None:
        cd = self.cfg.matching.cooldown_s
        if len(self._last_alert) > 256:
            for k in [k for k, t in self._last_alert.items() if now - t >= cd]:
                del self._last_alert[k]

    def _crop_jpeg(self, image: U8, box: F32) -> bytes | None:
        """The face with some context, for human adjudication of the alert."""
        h, w = image.shape[:2]
        x0, y0, x1, y1 = (float(v) for v in box)
        pad = 0.3 * max(x1 - x0, y1 - y0)
        xa, ya = max(0, int(x0 - pad)), max(0, int(y0 - pad))
        xb, yb = min(w, int(x1 + pad)), min(h, int(y1 + pad))
        if xb <= xa or yb <= ya:
            return None
        bgr = cv2.cvtColor(image[ya:yb, xa:xb], cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.alerts.crop_jpeg_quality])
        return bytes(buf.tobytes()) if ok else None

    def _end(self, tr: Track) -> None:
        """A track left: its embeddings are wiped; a never-matched one is counted as discarded."""
        if tr.embeddings and not tr.alerted:
            self.counters.non_match_discarded += 1
        tr.wipe()

    def finish(self) -> None:
        """End every live track (stop, EOF): nothing about non-matching people outlives the run."""
        for tr in self.tracker.end_all():
            self._end(tr)

    def _tick(self) -> None:
        self._times[self._n_times % _FPS_WINDOW] = time.monotonic()
        self._n_times += 1

    # -- status ----------------------------------------------------------------------------------
    def fps(self) -> float:
        n = min(self._n_times, _FPS_WINDOW)
        if n < 2:
            return 0.0
        newest = self._times[(self._n_times - 1) % _FPS_WINDOW]
        oldest = self._times[(self._n_times - n) % _FPS_WINDOW]
        return float((n - 1) / max(newest - oldest, 1e-9))

    def status(self) -> CameraStatus:
        """This camera's counts, for the status heartbeat (never anything about a person).

        Only the camera's own figures: the list in force, uptime and models belong to the appliance."""
        c = self.counters
        return CameraStatus(
            camera=self.camera,
            fps=round(self.fps(), 2),
            frames=c.frames,
            frames_dropped=c.frames_dropped,
            source_reconnects=c.source_reconnects,
            faces_seen=c.faces_seen,
            embeddings=c.embeddings,
            rejections=dict(c.rejections),
            matches=c.matches,
            alerts_suppressed_cooldown=self.suppressed,
            non_match_discarded=c.non_match_discarded,
            live_tracks=len(self.tracker.tracks),
        )


def match_view(
    matcher: Matcher, fused: F32, n_fused: int, view: F32 | None, now: float
) -> tuple[Match | None, int]:
    """A track's match after a new view: its fused probe, and the new view alone when given.

    The view alone can clear the threshold where the mean with the track's weaker views does not
    (fit-half levers, docs/BENCHMARKS.md "Recognition"); each is one per-face comparison, the unit
    the threshold is calibrated in. Returns the higher-scoring match and how many views its probe
    holds (1: the new view alone)."""
    m = matcher.match(fused, now=now)
    if view is None or (n_fused <= 1 and float(np.dot(fused, view)) > 0.99999):
        return m, n_fused  # the fused probe is this very view
    single = matcher.match(view, now=now)
    if single is not None and (m is None or single.score > m.score):
        return single, 1
    return m, n_fused


def build_stages(cfg: Config) -> Stages:
    """The camera's vision stack and the matching policy, from the config."""
    from edge.core.watchlist.policy import policy_for

    policy = policy_for(cfg)  # a threshold below the floor fails here, before any model loads
    return Stages(build_vision_stack(cfg, StackUse.CAMERA), policy)


def run_loop(
    pipeline: Pipeline,
    source: FrameSource | str | None = None,
    on_frame_processed: Callable[[], None] | None = None,
    stop_event: threading.Event | None = None,
    max_frames: int | None = None,
) -> Counters:
    """Feed `pipeline` from `source` (default: the config's camera) until the replay ends,
    `max_frames` frames were processed or `stop_event` is set."""
    cfg = pipeline.cfg
    stop = stop_event or threading.Event()
    src = make_source(source or cfg.camera.source, cfg.camera) if not isinstance(source, FrameSource) else source
    grabber = LatestFrameGrabber(src, cfg.camera.reconnect_initial_s, cfg.camera.reconnect_max_s)
    c = pipeline.counters
    processed = 0
    grabber.start()
    try:
        while not stop.is_set():
            if max_frames is not None and processed >= max_frames:
                break
            t0 = time.perf_counter()
            frame = grabber.get(timeout=0.2)
            c.frames_dropped = grabber.dropped
            c.source_reconnects = grabber.reconnects
            if frame is None:
                if grabber.ended:
                    break
                continue  # stalled camera: no watchdog ping
            pipeline.process(frame, wait_ms=(time.perf_counter() - t0) * 1e3)
            processed += 1
            if on_frame_processed is not None:
                on_frame_processed()
    finally:
        grabber.stop()
        c.frames_dropped = grabber.dropped
        c.source_reconnects = grabber.reconnects
        pipeline.finish()
    if grabber.error is not None and not stop.is_set():
        raise grabber.error
    return c
