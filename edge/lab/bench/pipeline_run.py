"""`lfr-edge bench pipeline --source FILE`: the camera loop's speed, stage by stage, and a peer.

Runs the real loop (grabber thread, detector, aligner, quality gate, tracker, embedder, matcher)
over a replay and reports per-stage median/p95 ms, end-to-end frames/s and faces/s, the share
of frame time spent outside model invokes (the part tiling, pre/post-processing and Python
decide), and peak RSS. `--peer face_recognition` runs that library (dlib HOG detector + the same
ResNet weights) on the same frames in the same process, and reports both fps, their ratio and
how often the two agree on who is who. The peer is a bench-only optional dependency.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import resource
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.core.config import CameraEntry, Config, load_config, parse_config
from edge.core.errors import InputError
from edge.core.imageio import read_rgb
from edge.core.inference import InvokeTimer
from edge.core.types import U8, Subject
from edge.core.watchlist.match import Matcher
from edge.core.watchlist.model import Watchlist
from edge.device.camera.base import FrameSource
from edge.device.camera.factory import make_source
from edge.device.pipeline import STAGES, FrameReport, Pipeline, Stages, build_stages, run_loop
from edge.device.pipeline_sinks import ListSink
from edge.device.watchlist.store import WatchlistHolder

Progress = Callable[[str], None]  # a status line for a person (the CLI shows it on a terminal)

F64 = npt.NDArray[np.float64]
UNKNOWN = "(unknown)"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# face_recognition (the peer) gives raw dlib descriptors; this cosine is what the benchmark configs
# used for both sides before the appliance scored against a cohort (docs/BENCHMARKS.md).
PEER_COSINE_THRESHOLD = 0.93


# ----------------------------------------------------------------------------------------------
class _TimedSource(FrameSource):
    """Measures capture (decode + colour conversion) inside the capture thread."""

    def __init__(self, inner: FrameSource, out: list[float]) -> None:
        super().__init__()
        self.inner, self.out = inner, out
        self.live, self.name = inner.live, inner.name

    def open(self) -> None:
        self.inner.open()

    def _grab(self) -> U8 | None:
        t = time.perf_counter()
        f = self.inner.read()
        self.out.append((time.perf_counter() - t) * 1e3)
        return None if f is None else f.image

    def close(self) -> None:
        self.inner.close()


def _uri(source: str) -> str:
    if source.startswith(("file:", "dir:")):
        return source
    p = Path(source)
    if p.is_dir():
        return f"dir:{p}"
    if p.is_file():
        return f"file:{p}"
    raise InputError(f"{source}: no such video file or frame folder")


def _enrol_images(folder: Path) -> list[tuple[str, Path]]:
    if not folder.is_dir():
        raise InputError(f"--enrol {folder}: not a directory of <subject>/<image> folders")
    out = [
        (d.name, img)
        for d in sorted(p for p in folder.iterdir() if p.is_dir())
        for img in sorted(d.iterdir())
        if img.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not out:
        raise InputError(f"--enrol {folder}: no <subject>/<image> files found")
    return out


def _watchlist(names: list[str], vecs: list[npt.NDArray[np.float32]]) -> Watchlist:
    subjects: list[Subject] = []
    owner: list[int] = []
    for n in names:
        if not subjects or subjects[-1].subject_id != n:
            subjects.append(Subject(n))
        owner.append(len(subjects) - 1)
    now = time.time()
    return Watchlist(1, now, now + 86400, tuple(subjects), np.stack(vecs).astype(np.float32), np.array(owner, np.int32))


def enrol_ours(cfg: Config, images: list[tuple[str, Path]]) -> Watchlist:
    """Templates made as the back office makes them: the still-image analyzer (whole-frame pass,
    same aligner, quality gate and embedder as the loop), primary face of each image."""
    from edge.core.vision.analyze import FaceAnalyzer

    analyzer = FaceAnalyzer.from_config(cfg)
    names, vecs = [], []
    for name, path in images:
        face = analyzer.primary(read_rgb(path))
        if face is not None and face.embedding is not None:
            names.append(name)
            vecs.append(face.embedding)
    if not vecs:
        raise InputError("--enrol: no usable face in any enrolment image")
    return _watchlist(names, vecs)


def synthetic_watchlist(n: int = 1000, dim: int = 128, seed: int = 0) -> Watchlist:
    """Random unit templates: matching and embedding run at their real cost, nobody matches."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return _watchlist([f"synthetic-{i:05d}" for i in range(n)], list(v))


# ----------------------------------------------------------------------------------------------
def _stats(ms: F64) -> dict[str, float]:
    ran = ms[ms > 0]
    if ran.size == 0:
        return {"median_ms": 0.0, "p95_ms": 0.0, "mean_per_frame_ms": 0.0, "frames_run": 0}
    return {
        "median_ms": round(float(np.median(ran)), 3),
        "p95_ms": round(float(np.percentile(ran, 95)), 3),
        "mean_per_frame_ms": round(float(ms.sum() / ms.size), 3),
        "frames_run": int(ran.size),
    }


def _label(matcher: Matcher | None, probe: npt.NDArray[np.float32]) -> str:
    if matcher is None:
        return UNKNOWN
    m = matcher.match(probe)
    return m.subject.subject_id if m else UNKNOWN


def _pair(a: F64, b: F64) -> list[tuple[int, int]]:
    """Greedy pairing of two pipelines' boxes by centre distance (their box conventions differ)."""
    if not len(a) or not len(b):
        return []
    ca = (a[:, :2] + a[:, 2:]) / 2
    cb = (b[:, :2] + b[:, 2:]) / 2
    size = np.maximum(a[:, 2] - a[:, 0], 1.0)[:, None]
    d = np.linalg.norm(ca[:, None] - cb[None], axis=2) / size
    pairs: list[tuple[int, int]] = []
    used_a: set[int] = set()
    used_b: set[int] = set()
    for k in np.argsort(d, axis=None):
        i, j = divmod(int(k), d.shape[1])
        if d[i, j] > 0.5:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))
    return pairs


class _Recorder:
    """The benchmark's FrameObserver: stage times, model time so far, and (with a peer) what
    each track would be labelled, per frame."""

    def __init__(self, timer: InvokeTimer, matcher: Matcher | None, labels_for_peer: bool, progress: Progress | None) -> None:
        self.timer, self.matcher = timer, matcher
        self.labels_for_peer, self.progress = labels_for_peer, progress
        self.rows: list[F64] = []
        self.invokes: list[float] = []
        self.labels: list[tuple[int, F64, list[str]]] = []
        self.size: tuple[int, int] | None = None
        self.pipeline: Pipeline | None = None

    def on_frame(self, r: FrameReport) -> None:
        self.rows.append(r.stage_ms.copy())
        self.invokes.append(self.timer.total_s)
        if self.size is None:
            self.size = (int(r.frame.image.shape[1]), int(r.frame.image.shape[0]))
        if self.labels_for_peer and self.matcher is not None:
            # Per-track matching for the agreement figure: wall time, so only with a peer.
            names = [_label(self.matcher, t.fused()) if t.n_kept else "" for t in r.tracks]
            self.labels.append((r.frame.seq, r.detections.boxes.astype(np.float64), names))
        if self.progress is not None and self.pipeline is not None and len(self.rows) % 10 == 0:
            self.progress(f"ours: {len(self.rows)} frames, {self.pipeline.fps():.1f} fps")


def run_ours(
    cfg: Config, stages: Stages, wl: Watchlist, uri: str, max_frames: int | None, progress: Progress | None,
    labels_for_peer: bool = True,
) -> tuple[dict[str, Any], list[tuple[int, F64, list[str]]]]:
    capture_ms: list[float] = []
    src = _TimedSource(make_source(uri, cfg.camera), capture_ms)
    timer = InvokeTimer()
    for model in stages.vision.models():
        model.timer = timer
    holder = WatchlistHolder(wl)
    sink = ListSink()
    rec = _Recorder(timer, holder.matcher(*stages.policy.matcher_args()), labels_for_peer, progress)
    pipe = Pipeline(cfg, stages, holder, sink, observer=rec)
    rec.pipeline = pipe
    t0 = time.perf_counter()
    try:
        counters = run_loop(pipe, src, max_frames=max_frames)
    finally:
        for model in stages.vision.models():
            model.timer = None
    rows, invokes, labels, size = rec.rows, rec.invokes, rec.labels, rec.size
    wall = time.perf_counter() - t0
    n = len(rows)
    if n == 0:
        raise InputError(f"{uri}: no frames read")
    ms = np.array(rows)
    cap = np.array(capture_ms[:n] or [0.0])
    stages_out = {"capture": _stats(cap)}
    for k, name in enumerate(STAGES[1:], start=1):
        stages_out[name] = _stats(ms[:, k])
    proc_s = float(ms[:, 1:].sum()) / 1e3
    in_models = invokes[-1] if invokes else 0.0
    result: dict[str, Any] = {
        "frames": n,
        "frame_size": list(size) if size else None,
        "wall_s": round(wall, 3),
        "fps": round(n / wall, 2),
        "faces_seen": counters.faces_seen,
        "faces_per_s": round(counters.faces_seen / wall, 1),
        "embeddings": counters.embeddings,
        "alerts": counters.matches,
        "frames_dropped": counters.frames_dropped,
        "stages": stages_out,
        "frame_ms_mean": round(wall * 1e3 / n, 2),
        "model_invoke_ms_per_frame": round(in_models * 1e3 / n, 2),
        "outside_model_share_of_frame_time": round(1.0 - in_models / wall, 3),
        "outside_model_share_of_processing": round(1.0 - in_models / max(proc_s, 1e-9), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    return result, labels


# ----------------------------------------------------------------------------------------------
def _import_face_recognition() -> Any:
    """face_recognition_models still imports pkg_resources (gone from recent setuptools); a tiny
    stand-in that resolves package files is all it needs."""
    if importlib.util.find_spec("face_recognition") is None:
        raise InputError(
            "--peer face_recognition: not installed (pip install face_recognition --no-deps "
            "face-recognition-models dlib-bin; bench-only, never needed on the device)"
        )
    if importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")

        def resource_filename(package: str, name: str) -> str:
            spec = importlib.util.find_spec(package)
            assert spec is not None and spec.origin is not None
            return os.path.join(os.path.dirname(spec.origin), name)

        shim.resource_filename = resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    import face_recognition

    return face_recognition


def run_peer(
    cfg: Config, uri: str, n_frames: int, images: list[tuple[str, Path]] | None, progress: Progress | None
) -> tuple[dict[str, Any], dict[int, tuple[F64, list[str]]]]:
    fr = _import_face_recognition()
    matcher = None
    if images:
        names, vecs = [], []
        for name, path in images:
            rgb = read_rgb(path)
            enc = fr.face_encodings(rgb)
            if enc:
                v = np.asarray(enc[0], np.float32)
                names.append(name)
                vecs.append(v / np.linalg.norm(v))
        if vecs:
            # The peer has no cohort: it scores raw cosines against a fixed threshold.
            matcher = Matcher(_watchlist(names, vecs), PEER_COSINE_THRESHOLD)
    src = make_source(uri, cfg.camera.model_copy(update={"realtime": False, "loop": False}))
    src.open()
    out: dict[int, tuple[F64, list[str]]] = {}
    faces = 0
    t0 = time.perf_counter()
    try:
        for _ in range(n_frames):
            f = src.read()
            if f is None:
                break
            locs = fr.face_locations(f.image, number_of_times_to_upsample=1, model="hog")
            encs = fr.face_encodings(f.image, locs, num_jitters=1, model="small")
            faces += len(locs)
            boxes = np.array([[lft, top, rgt, bot] for top, rgt, bot, lft in locs], np.float64).reshape(-1, 4)
            labels = []
            for e in encs:
                v = np.asarray(e, np.float32)
                labels.append(_label(matcher, v / np.linalg.norm(v)))
            out[f.seq] = (boxes, labels)
            if progress is not None:
                progress(f"peer: {len(out)}/{n_frames} frames")
    finally:
        src.close()
    wall = time.perf_counter() - t0
    n = len(out)
    return {
        "name": "face_recognition (dlib HOG upsample=1 + 5-point chips + dlib ResNet, num_jitters=1)",
        "frames": n,
        "wall_s": round(wall, 3),
        "fps": round(n / wall, 3) if wall > 0 else 0.0,
        "faces_seen": faces,
        "faces_per_s": round(faces / wall, 2) if wall > 0 else 0.0,
    }, out


def agreement(
    ours: list[tuple[int, F64, list[str]]], peer: dict[int, tuple[F64, list[str]]]
) -> dict[str, Any]:
    """Per frame, faces both found (paired by centre distance) and both labelled: same identity?"""
    paired = decided = same = 0
    named = named_same = 0  # faces either pipeline put a name to (the ones that raise alerts)
    only_ours = only_peer = 0
    for seq, boxes, names in ours:
        if seq not in peer:
            continue
        pboxes, pnames = peer[seq]
        pairs = _pair(boxes, pboxes)
        paired += len(pairs)
        only_ours += len(boxes) - len(pairs)
        only_peer += len(pboxes) - len(pairs)
        for i, j in pairs:
            if names[i]:  # our track has an embedding yet
                decided += 1
                same += names[i] == pnames[j]
                if UNKNOWN not in (names[i], pnames[j]) or names[i] != pnames[j]:
                    named += 1
                    named_same += names[i] == pnames[j]
    return {
        "faces_found_by_both": paired,
        "faces_only_ours": only_ours,
        "faces_only_peer": only_peer,
        "faces_labelled_by_both": decided,
        "same_identity": same,
        "agreement": round(same / decided, 4) if decided else None,
        "faces_named_by_either": named,
        "agreement_when_named": round(named_same / named, 4) if named else None,
    }


# ----------------------------------------------------------------------------------------------
class _Locked:
    """A detector or embedder behind a lock: one interpreter shared by several camera threads
    (the alternative the device does not take; measured with --interpreters shared)."""

    def __init__(self, inner: Any, lock: threading.Lock) -> None:
        self._inner, self._lock = inner, lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def detect(self, image: Any) -> Any:
        with self._lock:
            return self._inner.detect(image)

    def embed(self, chips: Any) -> Any:
        with self._lock:
            return self._inner.embed(chips)


class _Counted:
    """When a camera's last frame was done: a camera whose replay ends first is not charged for the
    time the other one still runs."""

    def __init__(self) -> None:
        self.t_last = 0.0

    def on_frame(self, report: FrameReport) -> None:
        self.t_last = time.perf_counter()


def run_cameras(
    cfg: Config, uris: list[str], max_frames: int | None, shared: bool, progress: Progress | None
) -> dict[str, Any]:
    """Several cameras in one process, as the device runs them (edge.device.cameras): each its own
    thread and loop; fps per camera over the run's wall time."""
    from edge.device.cameras import CameraSet

    names = [f"cam{i}" for i in range(len(uris))]
    entries = [CameraEntry(**{**cfg.camera.model_dump(), "name": n, "source": u}) for n, u in zip(names, uris, strict=True)]
    ccfg = cfg.model_copy(update={"cameras": entries})
    one: list[Stages] = []
    lock = threading.Lock()

    def stages(c: Config) -> Stages:
        if not shared:
            return build_stages(c)
        if not one:
            st = build_stages(c)
            v = st.vision
            # The proxies stand in for the real stages (duck-typed; the lab only).
            locked: dict[str, Any] = {"detector": _Locked(v.detector, lock), "embedder": _Locked(v.embedder, lock),
                                      "detector_light": _Locked(v.detector_light, lock) if v.detector_light else None}
            vs = dataclasses.replace(v, **locked)
            one.append(Stages(vs, st.policy))
        return one[0]

    counted = {n: _Counted() for n in names}
    cams = CameraSet(ccfg, WatchlistHolder(synthetic_watchlist()), ListSink(), observer=lambda n: counted[n],
                     stages=stages)
    stop = threading.Event()
    t0 = time.perf_counter()
    cams.run(stop, max_frames=max_frames)
    wall = time.perf_counter() - t0
    per = []
    for st, u in zip(cams.statuses(), uris, strict=True):
        own = max(counted[st.camera].t_last - t0, 1e-9)
        per.append({"camera": st.camera, "source": u, "frames": st.frames, "fps": round(st.frames / own, 2),
                    "faces_seen": st.faces_seen, "embeddings": st.embeddings, "frames_dropped": st.frames_dropped})
    return {
        "interpreters": "shared behind a lock" if shared else "one set per camera",
        "wall_s": round(wall, 3),
        "cameras": per,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


@dataclass(frozen=True, slots=True)
class PipelineBenchParams:
    source: str  # video file or folder of frames (PATH, file:PATH or dir:PATH)
    more_sources: tuple[str, ...] = ()  # further cameras, run together with `source` in one process
    shared_interpreters: bool = False  # several cameras: one interpreter set behind a lock
    config: Path | None = None  # models, detection, quality, tracking, matching sections
    frames: int | None = None  # stop after N frames
    enrol: Path | None = None  # <subject>/<image> folder for the watchlist (needed for agreement)
    threshold: float | None = None
    detector: str | None = None
    embedder: str | None = None
    peer: str | None = None  # "face_recognition"

    def __post_init__(self) -> None:
        if self.frames is not None and self.frames < 1:
            raise InputError(f"--frames: {self.frames} must be >= 1")


def run(args: PipelineBenchParams, progress: Progress | None = None) -> dict[str, Any]:
    """The bench's JSON document (docs/BENCHMARKS.md)."""
    from edge.core.inference import runtime_name

    cfg = load_config(args.config) if args.config else parse_config({}, Path.cwd())
    updates: dict[str, Any] = {}
    if args.detector or args.embedder:
        updates["models"] = cfg.models.model_copy(
            update={k: v for k, v in (("detector", args.detector), ("embedder", args.embedder)) if v}
        )
    if args.threshold is not None:
        updates["matching"] = cfg.matching.model_copy(update={"threshold": args.threshold})
    # Replays run flat out and lossless: the benchmark measures processing, not the clip's fps.
    updates["camera"] = cfg.camera.model_copy(update={"realtime": False, "loop": False})
    cfg = cfg.model_copy(update=updates)
    uri = _uri(args.source)
    if args.more_sources:
        if args.peer or args.enrol:
            raise InputError("--source given more than once: --peer and --enrol take one source")
        return {
            "models": {"detector": cfg.models.detector, "embedder": cfg.models.embedder, "runtime": runtime_name(),
                       "num_threads": cfg.models.num_threads},
            "detection": {"tiles": [cfg.detection.tiles.cols, cfg.detection.tiles.rows, cfg.detection.tiles.overlap],
                          "whole_frame": cfg.detection.whole_frame, "tiles_every_n": cfg.detection.tiles_every_n},
            "multi": run_cameras(cfg, [uri, *(_uri(s) for s in args.more_sources)], args.frames,
                                 args.shared_interpreters, progress),
        }  # fmt: skip
    stages = build_stages(cfg)
    images = _enrol_images(args.enrol) if args.enrol else None
    wl = enrol_ours(cfg, images) if images else synthetic_watchlist()
    ours, our_labels = run_ours(cfg, stages, wl, uri, args.frames, progress, labels_for_peer=bool(args.peer))
    report: dict[str, Any] = {
        "source": uri,
        "models": {"detector": cfg.models.detector, "embedder": cfg.models.embedder, "runtime": runtime_name(),
                   "num_threads": cfg.models.num_threads},
        "detection": {"tiles": [cfg.detection.tiles.cols, cfg.detection.tiles.rows, cfg.detection.tiles.overlap],
                      "whole_frame": cfg.detection.whole_frame, "tiles_every_n": cfg.detection.tiles_every_n,
                      "min_face_px": cfg.detection.min_face_px},
        "watchlist": {"subjects": len(wl.subjects), "templates": wl.n_templates,
                      "kind": "enrolled" if images else "synthetic"},
        "threshold": stages.policy.threshold,
        "threshold_units": stages.policy.scoring.units.value,
        "ours": ours,
    }  # fmt: skip
    if args.peer:
        peer, peer_labels = run_peer(cfg, uri, ours["frames"], images, progress)
        report["peer"] = peer
        report["fps_ratio"] = round(ours["fps"] / peer["fps"], 2) if peer["fps"] else None
        report["agreement"] = agreement(our_labels, peer_labels)
        if not images:
            report["agreement"]["note"] = "no --enrol: every face is unknown to both, so this only checks detection"
    return report


def format_text(r: dict[str, Any]) -> str:
    lines: list[str] = []
    if "multi" in r:
        mu, m = r["multi"], r["models"]
        lines.append(f"models {m['detector']} + {m['embedder']}  ({m['runtime']}, {m['num_threads']} threads each); "
                     f"interpreters: {mu['interpreters']}; tiles {r['detection']['tiles']} "
                     f"tiles_every_n={r['detection']['tiles_every_n']}")  # fmt: skip
        for c in mu["cameras"]:
            lines.append(f"{c['camera']:6s} {c['fps']:6.1f} fps  {c['frames']} frames, {c['faces_seen']} faces, "
                         f"{c['frames_dropped']} dropped  ({c['source']})")  # fmt: skip
        lines.append(f"wall {mu['wall_s']:.1f} s, load average {mu['load_avg_1m']}, peak RSS {mu['peak_rss_mb']:.0f} MB")
        return "\n".join(lines)
    o = r["ours"]
    w, h = o["frame_size"] or (0, 0)
    lines.append(f"source {r['source']}  {w}x{h}  {o['frames']} frames")
    m = r["models"]
    lines.append(f"models {m['detector']} + {m['embedder']}  ({m['runtime']}, {m['num_threads']} threads); "
          f"tiles {r['detection']['tiles']} whole_frame={r['detection']['whole_frame']} "
          f"tiles_every_n={r['detection']['tiles_every_n']}")  # fmt: skip
    lines.append(f"{'stage':10s} {'median ms':>10s} {'p95 ms':>8s} {'mean/frame':>11s} {'frames':>7s}")
    for name, s in o["stages"].items():
        lines.append(f"{name:10s} {s['median_ms']:10.2f} {s['p95_ms']:8.2f} {s['mean_per_frame_ms']:11.2f} {s['frames_run']:7d}")
    lines.append(f"end to end {o['fps']:.1f} fps, {o['faces_per_s']:.0f} faces/s ({o['faces_seen']} faces, "
          f"{o['embeddings']} embeddings, {o['alerts']} alerts)")  # fmt: skip
    lines.append(f"model invokes {o['model_invoke_ms_per_frame']:.1f} ms of {o['frame_ms_mean']:.1f} ms per frame; "
          f"outside model invokes {100 * o['outside_model_share_of_frame_time']:.0f} % of frame time")  # fmt: skip
    lines.append(f"peak RSS {o['peak_rss_mb']:.0f} MB")
    if "peer" in r:
        p = r["peer"]
        lines.append(f"peer {p['name']}: {p['fps']:.2f} fps, {p['faces_per_s']:.1f} faces/s over {p['frames']} frames")
        lines.append(f"ratio ours/peer {r['fps_ratio']}x")
        a = r["agreement"]
        pct = "n/a" if a["agreement"] is None else f"{100 * a['agreement']:.1f} %"
        lines.append(f"agreement on who is who: {pct} of {a['faces_labelled_by_both']} faces labelled by both "
              f"(found by both {a['faces_found_by_both']}, only ours {a['faces_only_ours']}, "
              f"only peer {a['faces_only_peer']})")  # fmt: skip
        if a["agreement_when_named"] is not None:
            lines.append(f"  of which named by either: {a['faces_named_by_either']}, same name "
                  f"{100 * a['agreement_when_named']:.1f} %")  # fmt: skip
    return "\n".join(lines)
