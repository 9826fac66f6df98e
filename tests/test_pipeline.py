"""The camera loop end to end on real faces: one alert per enrolled person, none for anyone else.

The clip is made by tests/videogen.py from real LFW photos (read in place); the watchlist is
built by running our own detector, aligner and embedder on *other* photos of the enrolled people.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from edge.backoffice.enrolment.templates import fuse_subject_templates
from edge.core.config import Config, parse_config
from edge.core.types import U8, Subject
from edge.core.watchlist.model import Watchlist
from edge.device.camera import SourceFailure, make_source
from edge.device.camera.base import FrameSource
from edge.device.pipeline import FrameReport, Pipeline, Stages, build_stages, run_loop
from edge.device.pipeline_sinks import JsonlSink, ListSink
from edge.device.watchlist.store import WatchlistHolder

sys.path.insert(0, str(Path(__file__).parent))
import videogen

ROOT = Path(__file__).resolve().parent.parent
# These tests check the loop (tracking, fusion, one event per person, cooldown), not the embedder's
# accuracy (`lfr-edge eval`, `lfr-edge bench recognition`). The clip's enrolled people score 5.4-11
# S-norm units on their shown photo, its strangers -3.8 at most: a threshold just above the
# embedder's floor (4.35) separates them with room for the video's blur and small faces.
TEST_MATCHING: dict[str, Any] = {"threshold": 4.5, "min_margin": 0.5, "cooldown_s": 60.0}


def _cfg(**matching: Any) -> Config:
    return parse_config({"matching": {**TEST_MATCHING, **matching}, "camera": {"source": "dir:/nonexistent"}}, ROOT)


@pytest.fixture(scope="module")
def stages() -> Stages:
    return build_stages(_cfg())


@pytest.fixture(scope="module")
def clip(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("clip")
    truth = videogen.generate(faces_dir, out, 1280, 720, n_frames=90, fps=15.0, seed=0)
    return out, truth


def enrol(faces_dir: Path, identities: list[str]) -> Watchlist:
    """Templates from photos the clip does not show, made by our still-image analyzer (the same
    detector, aligner, quality gate and embedder as the loop), as the back office would."""
    from edge.core.vision.analyze import FaceAnalyzer

    analyzer = FaceAnalyzer.from_config(_cfg())
    per_subject: list[list[np.ndarray]] = []
    for ident in identities:
        descs = []
        for path in videogen.enrolment_images(faces_dir / "lfw", ident, n=3):
            face = analyzer.primary(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
            if face is not None and face.embedding is not None:
                descs.append(face.embedding)
        per_subject.append(descs)
    # Photos of one person fused into one template, as `watchlist build` does.
    templates, owner = fuse_subject_templates(per_subject)
    assert owner.tolist() == list(range(len(identities))), "every enrolled person needs a template"
    now = time.time()
    subjects = tuple(Subject(ident, category="wanted") for ident in identities)
    return Watchlist(7, now, now + 3600, subjects, templates, owner)


@pytest.fixture(scope="module")
def watchlist(stages: Stages, faces_dir: Path, clip: tuple[Path, dict[str, Any]]) -> Watchlist:
    return enrol(faces_dir, list(clip[1]["enrolled"]))


class _Observer:
    """A FrameObserver that hands each report to a test's callback."""

    def __init__(self, fn: Callable[[FrameReport], None]) -> None:
        self.fn = fn

    def on_frame(self, report: FrameReport) -> None:
        self.fn(report)


def _run(cfg: Config, stages: Stages, wl: Watchlist | WatchlistHolder | None, source: FrameSource | str,
         on_frame: Callable[[FrameReport], None] | None = None) -> tuple[Pipeline, ListSink]:  # fmt: skip
    sink = ListSink()
    holder = wl if isinstance(wl, WatchlistHolder) else WatchlistHolder(wl)
    pipe = Pipeline(cfg, stages, holder, sink, observer=_Observer(on_frame) if on_frame else None)
    run_loop(pipe, source)
    return pipe, sink


def _person_at(truth: dict[str, Any], frame: int, bbox: tuple[float, ...]) -> str | None:
    """Which person of the ground truth the alerted box covers."""
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    for ident, boxes in truth["boxes"].items():
        b = boxes[frame]
        if b is not None and b[0] <= cx <= b[2] and b[1] <= cy <= b[3]:
            return str(ident)
    return None


@pytest.mark.parametrize("scheme", ["dir", "file"])
def test_one_event_per_enrolled_person_and_none_for_others(
    scheme: str, stages: Stages, watchlist: Watchlist, clip: tuple[Path, dict[str, Any]]
) -> None:
    out, truth = clip
    uri = f"dir:{out / 'frames'}" if scheme == "dir" else f"file:{out / 'clip.mp4'}"
    cfg = _cfg()
    pipe, sink = _run(cfg, stages, watchlist, uri)
    got = sorted(e.match.subject.subject_id for e in sink.events)
    assert got == sorted(truth["enrolled"])
    for e in sink.events:
        # The right person was alerted on, not just the right name.
        assert _person_at(truth, e.frame_seq, e.bbox) == e.match.subject.subject_id
        assert e.match.score >= 0.93 and e.watchlist_version == 7 and e.camera == cfg.device.camera_name
        assert e.crop_jpeg is not None and cv2.imdecode(np.frombuffer(e.crop_jpeg, np.uint8), 1) is not None
    c = pipe.counters
    assert c.frames == truth["frames"] and c.matches == 3 and c.faces_seen > 300
    # Non-enrolled people big enough to pass the quality gate were embedded, never matched, and
    # their tracks' embeddings discarded when the tracks ended (the smallest faces are gated out).
    assert c.non_match_discarded >= 2 and c.embeddings > c.non_match_discarded
    assert not pipe.tracker.tracks  # nothing about anyone outlives the run
    st = pipe.status()
    assert st.matches == 3 and st.frames == truth["frames"] and st.live_tracks == 0


class CoveredLens(FrameSource):
    """Wraps a replay and blacks out frames [a, b): every face vanishes, then comes back."""

    def __init__(self, inner: FrameSource, a: int, b: int) -> None:
        super().__init__()
        self.inner, self.a, self.b = inner, a, b
        self.live, self.name = inner.live, "covered"

    def open(self) -> None:
        self.inner.open()

    def _grab(self) -> U8 | None:
        f = self.inner.read()
        if f is None:
            return None
        return np.zeros_like(f.image) if self.a <= f.seq < self.b else f.image

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize(("cooldown", "expect"), [(60.0, 3), (0.0, 6)])
def test_cooldown_suppresses_a_reacquired_track(
    cooldown: float, expect: int, stages: Stages, watchlist: Watchlist, clip: tuple[Path, dict[str, Any]]
) -> None:
    out, truth = clip
    cfg = _cfg(cooldown_s=cooldown)
    src = CoveredLens(make_source(f"dir:{out / 'frames'}"), 30, 30 + cfg.tracking.max_missed_frames + 3)
    pipe, sink = _run(cfg, stages, watchlist, src)
    ids = [e.match.subject.subject_id for e in sink.events]
    assert sorted(set(ids)) == sorted(truth["enrolled"])
    assert len(ids) == expect  # 6 = each enrolled person once per track, before and after the cover
    assert len({e.track_id for e in sink.events}) == expect
    assert pipe.suppressed == (3 if cooldown else 0)


class FlakyCamera(FrameSource):
    """A live camera (replaying real frames) whose cable is pulled after `fail_after` frames."""

    live = True
    name = "flaky"

    def __init__(self, folder: Path, fail_after: int) -> None:
        super().__init__()
        self.files = sorted(folder.glob("*.jpg"))
        self.fail_after = fail_after
        self.i = 0
        self.failed = False
        self.opens = 0

    def open(self) -> None:
        self.opens += 1

    def _grab(self) -> U8 | None:
        if self.i == self.fail_after and not self.failed:
            self.failed = True
            raise SourceFailure("flaky: cable pulled")
        if self.i >= len(self.files):
            return None
        bgr = cv2.imread(str(self.files[self.i]))
        self.i += 1
        time.sleep(1 / 30)  # a 30 fps camera
        return np.ascontiguousarray(bgr[:, :, ::-1])

    def close(self) -> None:
        pass


def test_source_failure_is_reconnected_and_the_loop_keeps_going(
    stages: Stages, watchlist: Watchlist, clip: tuple[Path, dict[str, Any]]
) -> None:
    out, _ = clip
    cam = FlakyCamera(out / "frames", fail_after=20)
    cfg = parse_config(
        {"matching": TEST_MATCHING, "camera": {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.2}}, ROOT
    )
    seqs: list[int] = []
    pipe, _ = _run(cfg, stages, watchlist, cam, on_frame=lambda r: seqs.append(r.frame.seq))
    assert pipe.counters.source_reconnects == 1 and cam.opens == 2
    assert max(seqs) >= 80  # frames after the failure were processed: the loop kept going
    assert pipe.status().source_reconnects == 1


def test_watchlist_swapped_between_frames_and_expired_list_never_alerts(
    stages: Stages, watchlist: Watchlist, clip: tuple[Path, dict[str, Any]]
) -> None:
    out, _ = clip
    cfg = _cfg()
    expired = Watchlist(
        6, 0.0, time.time() - 1, watchlist.subjects, watchlist.templates, watchlist.template_subject
    )
    holder = WatchlistHolder(expired)
    swapped_at: list[int] = []

    def on_frame(r: FrameReport) -> None:
        if r.frame.seq == 45:
            assert holder.current() is expired and expired.expired(time.time())
            holder.swap(watchlist)  # e.g. the sync thread installed a fresh bundle
            swapped_at.append(r.frame.seq)

    pipe, sink = _run(cfg, stages, holder, f"dir:{out / 'frames'}", on_frame=on_frame)
    assert swapped_at == [45]
    assert sink.events and all(e.frame_seq > 45 and e.watchlist_version == 7 for e in sink.events)
    assert pipe.counters.embeddings > 0


def test_jsonl_sink_writes_one_line_per_match(tmp_path: Path, watchlist: Watchlist) -> None:
    from edge.core.types import Match, MatchEvent

    sink = JsonlSink(tmp_path / "ev.jsonl")
    m = Match(watchlist.subjects[0], 0.97, 0.1, 0.93)
    for k in range(2):
        sink.on_match(MatchEvent(m, k, 10 + k, time.time(), "cam0", (1, 2, 3, 4), 3, 7, b"\xff\xd8"))
    sink.close()
    lines = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [x["track_id"] for x in lines] == [0, 1] and lines[0]["subject_id"] == watchlist.subjects[0].subject_id
    assert "crop_jpeg_b64" not in lines[0]  # crops go to the alert publisher, not into a log file


def _install_bundle(cfg_path: Path, office: Any, wl: Watchlist) -> None:
    """Enrol as the back office does: a signed bundle encrypted to this device, installed in its store."""
    from edge.core.config import load_config
    from edge.core.keys import generate_device_keys
    from edge.core.watchlist.bundle import build_bundle
    from edge.device.watchlist.store import embedder_sha256_for, landmarks_sha256_for, store_from_config

    cfg = load_config(cfg_path)
    device = generate_device_keys(cfg.device.keys_dir)
    bundle = build_bundle(
        subjects=wl.subjects, templates=wl.templates, template_subject=wl.template_subject,
        signer=office.ed25519, recipients=[device.x25519_public], version=7,
        expires_at=time.time() + 3600, embedder_sha256=embedder_sha256_for(cfg),
        landmarks_sha256=landmarks_sha256_for(cfg),
    )  # fmt: skip
    store_from_config(cfg, device).install(bundle)


def test_run_alerts_from_the_installed_watchlist_and_stops_on_sigterm_within_a_second(
    tmp_path: Path, clip: tuple[Path, dict[str, Any]], watchlist: Watchlist
) -> None:
    from edge.core.keys import BACKOFFICE_ED25519_PUB, generate_backoffice_keys

    out, truth = clip
    office = generate_backoffice_keys(tmp_path / "office")
    conf = tmp_path / "lfr.yaml"
    conf.write_text(yaml.safe_dump({
        "device": {"id": "van-test", "data_dir": str(tmp_path / "data"), "keys_dir": str(tmp_path / "keys")},
        "camera": {"source": f"dir:{out / 'frames'}", "loop": True},
        "matching": TEST_MATCHING,
        # Installed before `run` starts, so kept on the card (the opt-in at-rest store).
        "watchlist": {"trusted_signers": [str(tmp_path / "office" / BACKOFFICE_ED25519_PUB)], "at_rest": True},
        "alerts": {"allow_unsealed": True, "allow_unsealed_reason": "test rig: no back-office sealing key"},
        "logging": {"format": "json"},
    }))  # fmt: skip
    _install_bundle(conf, office, watchlist)
    events = tmp_path / "ev.jsonl"
    exe = ROOT / ".venv" / "bin" / "lfr-edge"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge"]
    proc = subprocess.Popen(
        [*cmd, "run", "--config", str(conf), "--events", str(events)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stderr is not None
    started = threading.Event()

    def watch() -> None:  # log lines go to stderr
        assert proc.stderr is not None
        for line in proc.stderr:
            if "camera loops started" in line:
                started.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        assert started.wait(60), "run did not start"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not events.exists() or len(events.read_text().splitlines()) < 3):
            time.sleep(0.2)
        time.sleep(0.5)  # well inside the loop, mid-inference
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, proc.stdout.read() if proc.stdout else ""
    assert elapsed < 1.0
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert sorted(x["subject_id"] for x in lines) == sorted(truth["enrolled"])
    assert all(x["watchlist_version"] == 7 for x in lines)


class StallingCamera(FlakyCamera):
    """Delivers `n` real frames, then hangs (a frozen driver) until released."""

    def __init__(self, folder: Path, n: int) -> None:
        super().__init__(folder, fail_after=10**9)
        self.n = n
        self.release = threading.Event()

    def _grab(self) -> U8 | None:
        if self.i >= self.n:
            self.release.wait(10)
            return None
        return super()._grab()


def test_watchdog_hook_fires_only_for_processed_frames_and_stops_when_the_camera_stalls(
    stages: Stages, watchlist: Watchlist, clip: tuple[Path, dict[str, Any]]
) -> None:
    out, _ = clip
    cam = StallingCamera(out / "frames", n=12)
    cfg = _cfg()
    pings: list[int] = []
    processed: list[int] = []
    stop = threading.Event()
    pipe = Pipeline(
        cfg, stages, WatchlistHolder(watchlist), ListSink(), observer=_Observer(lambda r: processed.append(r.frame.seq))
    )
    t = threading.Thread(target=run_loop, args=(pipe, cam, lambda: pings.append(1), stop))
    t.start()
    try:
        deadline = time.monotonic() + 30
        while cam.i < cam.n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the camera is now frozen: the loop keeps waiting for a frame
        stalled_at = len(pings)
        time.sleep(1.0)
        assert len(pings) == stalled_at  # no frame, no watchdog ping: systemd would restart us
        assert stalled_at == len(processed) and 0 < stalled_at <= 12
    finally:
        stop.set()
        cam.release.set()
        t.join(5)
    assert not t.is_alive()


def test_tiles_every_other_frame_still_alerts_once_per_enrolled_person(
    watchlist: Watchlist, clip: tuple[Path, dict[str, Any]]
) -> None:
    out, truth = clip
    cfg = parse_config(
        {"matching": TEST_MATCHING, "detection": {"tiles_every_n": 2}, "camera": {"source": "dir:/x"}}, ROOT
    )
    stages = build_stages(cfg)
    assert stages.vision.detector_light is not None
    calls = {"full": 0, "light": 0}
    for name, det in (("full", stages.vision.detector), ("light", stages.vision.detector_light)):
        inner = det.detect

        def counted(img: Any, _inner: Any = inner, _name: str = name) -> Any:
            calls[_name] += 1
            return _inner(img)

        det.detect = counted  # type: ignore[method-assign]
    _, sink = _run(cfg, stages, watchlist, f"dir:{out / 'frames'}")
    assert calls == {"full": 45, "light": 45}
    assert sorted(e.match.subject.subject_id for e in sink.events) == sorted(truth["enrolled"])


def test_a_tracks_best_view_alone_can_raise_the_alert_its_fused_views_miss() -> None:
    """match_each_view: the new view is matched alone as well as fused with the track's weaker views;
    the alert says which probe matched (frames_fused 1 = the view alone)."""
    from edge.core.watchlist.match import Matcher
    from edge.device.pipeline import match_view

    e = np.eye(128, dtype=np.float32)
    now = time.time()
    wl = Watchlist(1, now, now + 3600, (Subject("ann"),), e[:1].copy(), np.zeros(1, np.int32))
    matcher = Matcher(wl, threshold=0.9)  # raw cosines: no cohort, so the numbers are plain
    good = (0.95 * e[0] + np.sqrt(1 - 0.95**2) * e[1]).astype(np.float32)  # cosine 0.95 with ann
    weak = e[2]  # a blurred earlier view: nothing like anyone
    fused = (good + weak) / np.linalg.norm(good + weak)  # cosine 0.67: below the threshold
    m, n = match_view(matcher, fused, 2, good, now)
    assert m is not None and m.subject.subject_id == "ann" and n == 1 and abs(m.score - 0.95) < 1e-5
    assert match_view(matcher, fused, 2, None, now) == (None, 2)  # match_each_view off: missed
    # A stranger's views stay below the threshold either way.
    assert match_view(matcher, e[3], 2, e[4], now) == (None, 2)
