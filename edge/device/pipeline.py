"""The camera loop: frame → detect → align → quality → track → embed → match → MatchEvent.

One `Pipeline` holds the per-process state (models, tracker, cooldowns, counters) and processes
one frame at a time; `run_loop` feeds it from a LatestFrameGrabber until EOF, `max_frames` or a
stop request. Others hook in without touching the loop: `on_frame_processed` (the systemd
watchdog: called only after a frame was really processed, so a stalled camera stops the pings),
an `EventSink` (JSON lines now, the MQTT publisher later) and the shared WatchlistHolder
(edge.device.watchlist.store), whose swap() puts a new list in force at the next frame.

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
from typing import Any, Protocol

import cv2
import numpy as np

from edge.core.config import Config
from edge.core.types import F32, U8, Counters, Detections, Frame, Match, MatchEvent, Quality
from edge.core.vision.quality import FACE_REGION, count_rejections
from edge.core.vision.track import EMBED_DIM, Track, Tracker
from edge.core.watchlist.match import Matcher
from edge.core.watchlist.model import Watchlist
from edge.core.watchlist.policy import MatchingPolicy
from edge.device.camera.base import FrameSource
from edge.device.camera.factory import make_source
from edge.device.camera.grabber import LatestFrameGrabber
from edge.device.watchlist.store import WatchlistHolder

log = logging.getLogger("lfr_edge.pipeline")

STAGES = ("capture", "detect", "align", "quality", "embed", "match")
_FPS_WINDOW = 32


class EventSink(Protocol):
    def on_match(self, event: MatchEvent) -> None: ...


class Detector(Protocol):
    def detect(self, image: U8) -> Detections: ...


class Aligner(Protocol):
    def matrices(self, keypoints: F32) -> F32: ...
    def cut(self, image: U8, matrices: F32, rows: slice, cols: slice) -> U8: ...
    def align_with(self, image: U8, matrices: F32) -> U8: ...


class QualityGate(Protocol):
    def assess(self, keypoints: F32, scores: F32, chips: U8) -> list[Quality]: ...


class Embedder(Protocol):
    def embed(self, chips: U8) -> F32: ...


@dataclass(slots=True)
class Stages:
    detector: Detector
    aligner: Aligner
    quality: QualityGate
    embedder: Embedder
    model_ids: dict[str, str]
    policy: MatchingPolicy
    # Whole-frame pass only, for the frames between tile passes (detection.tiles_every_n > 1).
    detector_light: Detector | None = None
    tiles_every_n: int = 1
    embed_dim: int = EMBED_DIM  # the embedder's descriptor size: the tracks' buffers are this wide


class Pipeline:
    def __init__(
        self,
        cfg: Config,
        stages: Stages,
        watchlists: WatchlistHolder,
        sink: EventSink,
        camera: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.stages = stages
        self.watchlists = watchlists
        self.sink = sink
        self.camera = camera or cfg.device.camera_name
        t = cfg.tracking
        self.tracker = Tracker(
            t.iou_threshold, t.max_centre_dist, t.max_missed_frames, t.best_k, t.max_tracks, dim=stages.embed_dim
        )
        self.counters = Counters()
        self.suppressed = 0  # matches silenced by the per-subject cooldown
        # Per-subject time of the last alert; at most one entry per watchlist subject, pruned by age.
        self._last_alert: dict[str, float] = {}
        # Stage times of the last frame (ms), overwritten each frame: read by the benchmark.
        self.last_ms = np.zeros(len(STAGES), np.float64)
        self.last_faces = 0
        self.last_embedded = 0
        # The last frame's detections and their tracks (overwritten each frame; for the benchmark).
        self.last_dets = Detections.empty()
        self.last_tracks: list[Track] = []
        self._times = np.zeros(_FPS_WINDOW, np.float64)
        self._n_times = 0
        self._started = time.monotonic()

    # -- one frame -----------------------------------------------------------------------------
    def process(self, frame: Frame) -> None:
        ms = self.last_ms
        ms[1:] = 0.0
        img = frame.image
        c = self.counters
        pc = time.perf_counter

        st = self.stages
        full = st.detector_light is None or (self.tracker.frame_idx + 1) % st.tiles_every_n == 0
        t0 = pc()
        dets = (st.detector if full or st.detector_light is None else st.detector_light).detect(img)
        t1 = pc()
        ms[1] = (t1 - t0) * 1e3
        n = len(dets)
        c.frames += 1
        c.faces_seen += n
        self.last_faces = n
        self.last_embedded = 0

        tracks, ended = self.tracker.update(dets.boxes)
        self.last_dets, self.last_tracks = dets, tracks
        for tr in ended:
            self._end(tr)
        if n:
            self._faces(frame, dets, tracks)
        self._tick()

    def _faces(self, frame: Frame, dets: Detections, tracks: list[Track]) -> None:
        ms = self.last_ms
        pc = time.perf_counter
        al = self.stages.aligner
        t0 = pc()
        # Every face is judged, but only on its chip's face region (all the blur gate reads);
        # whole chips are cut below for the few faces that are embedded this frame.
        mats = al.matrices(dets.keypoints)
        regions = al.cut(frame.image, mats, *FACE_REGION)
        t1 = pc()
        quality = self.stages.quality.assess(dets.keypoints, dets.scores, regions)
        t2 = pc()
        ms[2] = (t1 - t0) * 1e3
        ms[3] = (t2 - t1) * 1e3
        count_rejections(quality, into=self.counters.rejections)

        matcher = self._matcher()
        if matcher is None or matcher.watchlist.expired(frame.t_wall) or not matcher.watchlist.subjects:
            return  # nothing to match against: compute no embedding at all
        every_n = self.cfg.tracking.embed_every_n
        fidx = self.tracker.frame_idx
        sel = [
            i
            for i, (q, tr) in enumerate(zip(quality, tracks, strict=True))
            if q.accepted and tr.wants_embedding(q.rank, fidx, every_n)
        ]
        if not sel:
            return
        t3 = pc()
        chips = al.align_with(frame.image, mats[sel])
        t4 = pc()
        vecs = self.stages.embedder.embed(chips)
        t5 = pc()
        ms[2] += (t4 - t3) * 1e3
        ms[4] = (t5 - t4) * 1e3
        self.counters.embeddings += len(sel)
        self.last_embedded = len(sel)
        for j, i in enumerate(sel):
            tracks[i].add_embedding(vecs[j], quality[i].rank, fidx)
        probes = np.stack([tracks[i].fused() for i in sel])
        for k, i in enumerate(sel):
            m = matcher.match(probes[k], now=frame.t_wall)
            if m is not None:
                self._on_match(frame, dets, i, tracks[i], m, matcher.watchlist.version)
        ms[5] = (pc() - t5) * 1e3

    def _matcher(self) -> Matcher | None:
        return self.watchlists.matcher(*self.stages.policy.matcher_args())

    def _on_match(self, frame: Frame, dets: Detections, i: int, tr: Track, m: Match, version: int) -> None:
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
            frames_fused=tr.n_kept,
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
        self.last_dets, self.last_tracks = Detections.empty(), []

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

    def status(self) -> dict[str, Any]:
        """Counts only, for the status heartbeat (never anything about a person)."""
        c = self.counters
        out: dict[str, Any] = {
            "uptime_s": round(time.monotonic() - self._started, 1),
            "fps": round(self.fps(), 2),
            "frames": c.frames,
            "frames_dropped": c.frames_dropped,
            "source_reconnects": c.source_reconnects,
            "faces_seen": c.faces_seen,
            "embeddings": c.embeddings,
            "rejections": dict(c.rejections),
            "alerts": c.matches,
            "alerts_suppressed_cooldown": self.suppressed,
            "non_match_discarded": c.non_match_discarded,
            "live_tracks": len(self.tracker.tracks),
            "models": dict(self.stages.model_ids),
        }
        wl = self.watchlists.current()
        if wl is None:
            out["watchlist"] = "none installed"
        else:
            out["watchlist_version"] = wl.version
            out["watchlist_expires_at"] = wl.expires_at
            out["watchlist_subjects"] = len(wl.subjects)
            out["watchlist"] = "watchlist expired" if wl.expired(time.time()) else "active"
        return out


def build_stages(cfg: Config) -> Stages:
    """Load the configured models (sha256-checked) with the configured TFLite thread count."""
    from edge.core.inference import load_model
    from edge.core.vision.align import Aligner as _Aligner
    from edge.core.vision.detect import FaceDetector
    from edge.core.vision.embed import Embedder as _Embedder
    from edge.core.vision.quality import QualityGate as _Gate
    from edge.core.watchlist.policy import policy_for

    d, m = cfg.detection, cfg.models
    policy = policy_for(cfg)  # a threshold below the floor fails here, before any model loads
    detector = FaceDetector.from_settings(load_model(m.detector, m.dir, num_threads=m.num_threads), d)
    light = None
    if d.tiles_every_n > 1:
        # Same interpreter (both run batch 1, one after the other), whole-frame view only.
        light = FaceDetector.from_settings(detector.model, d, whole_frame_only=True)
    embedder = _Embedder(load_model(m.embedder, m.dir, num_threads=m.num_threads), flip=policy.scoring.flip)
    return Stages(
        detector=detector,
        aligner=_Aligner.for_template(embedder.template, embedder.chip_size),
        quality=_Gate(cfg.quality),
        embedder=embedder,
        model_ids={"detector": m.detector, "embedder": m.embedder},
        policy=policy,
        detector_light=light,
        tiles_every_n=d.tiles_every_n,
        embed_dim=embedder.dim,
    )


def run_loop(
    cfg: Config,
    source: FrameSource | str | None,
    sink: EventSink,
    on_frame_processed: Callable[[], None] | None = None,
    stop_event: threading.Event | None = None,
    max_frames: int | None = None,
    *,
    watchlist: Watchlist | WatchlistHolder | None = None,
    pipeline: Pipeline | None = None,
    on_frame: Callable[[Pipeline, Frame], None] | None = None,
) -> Counters:
    """Run until the replay ends, `max_frames` frames were processed or `stop_event` is set.

    Pass `pipeline` to keep a handle for status(); otherwise one is built from `cfg` (models
    loaded here) with `watchlist` (a Watchlist, the shared WatchlistHolder, or None).
    """
    stop = stop_event or threading.Event()
    if pipeline is None:
        holder = watchlist if isinstance(watchlist, WatchlistHolder) else WatchlistHolder(watchlist)
        pipeline = Pipeline(cfg, build_stages(cfg), holder, sink)
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
            pipeline.last_ms[0] = (time.perf_counter() - t0) * 1e3
            pipeline.process(frame)
            processed += 1
            if on_frame is not None:
                on_frame(pipeline, frame)
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
