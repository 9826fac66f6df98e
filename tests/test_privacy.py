"""THE PRIVACY TEST: people who do not match leave no trace on disk, in logs or on the wire.

The real camera loop (real models, real tracker, the real alert publisher and spool, the real audit
log, a real Mosquitto) watches a video of real faces none of whom is on the watchlist, with DEBUG
logging on and a subscriber on `#`. The embedder is wrapped so that the test knows every embedding
and every face chip the loop computed; afterwards none of them, and no image at all, may be found
in any file under the data dir, in any log line or in any MQTT message, and the only messages sent
are the status heartbeat and the audit records (counts, hashes, ids of configuration and models).
The deployment record produced at stop must carry the right counts.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edge.core.audit import log as al
from edge.core.config import Config, load_config
from edge.core.types import F32, U8
from tests.broker import broker_factory, plain_broker  # noqa: F401  (pytest fixtures)
from tests.mqtt_collect import Collector

pytestmark = pytest.mark.slow

N_FRAMES = 36
JPEG_RE = re.compile(rb"\xff\xd8\xff[\xc0-\xfe].{0,24}?(JFIF|Exif|\xff\xdb)", re.S)  # SOI + a JPEG segment
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
B64_RE = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
NUM_RUN_RE = re.compile(r"(?:-?\d+(?:\.\d+)?(?:[eE]-?\d+)?[,\s\]\[]+){16,}")  # 16+ numbers in a row
AUDIT_KINDS_EXPECTED = {
    al.SERVICE_START, al.CONFIG, al.MODELS, al.THRESHOLDS, "watchlist_loaded", al.CHECKPOINT,
    al.DEPLOYMENT_STOP, al.DEPLOYMENT_RECORD, al.SERVICE_STOP, "data_protection",
}  # fmt: skip


def require_loop() -> None:
    """The shipped models the loop runs on are in the manifest (a missing one is a failure, not a skip)."""
    from edge.core.inference import default_models_dir, load_manifest

    manifest = load_manifest(default_models_dir())
    cfg = Config()
    for mid in (cfg.models.detector, cfg.models.embedder):
        assert mid in manifest, f"model {mid} is missing from models/MANIFEST.json"


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clip(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A replay of real faces, none of them enrolled."""
    require_loop()
    from tests.videogen import default_cast, generate

    out = tmp_path_factory.mktemp("privacy-clip")
    cast = [p for p in default_cast(N_FRAMES) if not p.enrolled]
    truth = generate(faces_dir, out, 1280, 720, n_frames=N_FRAMES, fps=15.0, cast=cast, write_dir=False)
    assert truth["enrolled"] == []
    return out / "clip.mp4", truth


class RecordingEmbedder:
    """Test hook: keeps a copy of every chip and embedding the loop computes (the loop keeps none)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.chips: list[U8] = []
        self.vectors: list[F32] = []

    def __getattr__(self, name: str) -> Any:  # dim, template, …: the wrapped embedder's
        return getattr(self.inner, name)

    def embed(self, chips: U8) -> F32:
        out: F32 = self.inner.embed(chips)
        self.chips.extend(np.array(c, copy=True) for c in chips)
        self.vectors.extend(np.array(v, copy=True) for v in out)
        return out


class RecordingMatcher:
    """Test hook: keeps the fused probes (mean of a track's embeddings) the loop compared."""

    def __init__(self, inner: Any, probes: list[F32]) -> None:
        self.inner, self.probes = inner, probes
        self.watchlist = inner.watchlist

    def match(self, probe: F32, *args: Any, **kw: Any) -> Any:
        self.probes.append(np.array(probe, copy=True))
        return self.inner.match(probe, *args, **kw)


def recording_holder(wl: Any, probes: list[F32]) -> Any:
    from edge.device.watchlist.store import WatchlistHolder

    class RecordingHolder(WatchlistHolder):
        def matcher(self, *args: Any, **kw: Any) -> Any:
            m = super().matcher(*args, **kw)
            return None if m is None else RecordingMatcher(m, probes)

    return RecordingHolder(wl)


def enrol(stages: Any, faces_dir: Path) -> Any:
    """A watchlist of other people (real faces), so that the loop really embeds and compares."""
    import cv2

    from edge.core.types import Subject
    from edge.core.watchlist.model import Watchlist
    from tests.videogen import DEFAULT_CAST, enrolment_images

    lfw = faces_dir / "lfw"
    subjects, templates, owner = [], [], []
    for identity, enrolled, *_ in DEFAULT_CAST:
        if not enrolled:
            continue
        for img in enrolment_images(lfw, identity, 2):
            rgb = np.ascontiguousarray(cv2.cvtColor(cv2.imread(str(img)), cv2.COLOR_BGR2RGB))
            dets = stages.vision.detector.detect(rgb)
            if len(dets) == 0:
                continue
            areas = (dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])
            i = int(np.argmax(areas))
            chips, _ = stages.vision.aligner.align(rgb, dets.keypoints[i : i + 1])
            templates.append(stages.vision.embedder.embed(chips)[0])
            if not subjects or subjects[-1].subject_id != identity:
                subjects.append(Subject(identity))
            owner.append(len(subjects) - 1)
    assert subjects, "no enrolment face was detected"
    now = time.time()
    return Watchlist(
        version=7, created_at=now, expires_at=now + 3600, subjects=tuple(subjects),
        templates=np.stack(templates).astype(np.float32), template_subject=np.asarray(owner, np.int32),
        signer_key_id="test-signer",
    )  # fmt: skip


def write_config(tmp_path: Path, broker_uri: str) -> Path:
    doc = {
        "device": {"id": "van-9", "location": "Privacy Test Square", "data_dir": str(tmp_path / "data"),
                   "keys_dir": str(tmp_path / "keys")},
        "camera": {"source": "file:/dev/null"},
        "mqtt": {"brokers": [broker_uri], "status_interval_s": 0.5},
        "matching": {"threshold": 4.5, "min_margin": 0.5},  # as tests/test_pipeline.py
        "logging": {"level": "DEBUG", "format": "json"},
        "audit": {"checkpoint_every": 10},
        "alerts": {"allow_unsealed": True, "allow_unsealed_reason": "test rig: no back-office sealing key"},
    }  # fmt: skip
    p = tmp_path / "lfr-edge.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.fixture
def debug_logs() -> Iterator[io.StringIO]:
    """Every log line at DEBUG, rendered by the appliance's own formatter."""
    from edge.core.logsetup import JsonFormatter

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


# ----------------------------------------------------------------------------------- what to look for


def needles(rec: RecordingEmbedder, frame_rows: list[bytes]) -> list[tuple[str, bytes]]:
    """Byte patterns that only a leaked embedding, chip or frame could contain."""
    out: list[tuple[str, bytes]] = []
    for k, v in enumerate(rec.vectors):
        f32, f16, f64 = v.astype("<f4").tobytes(), v.astype("<f2").tobytes(), v.astype("<f8").tobytes()
        out += [(f"embedding {k} float32", f32[o : o + 32]) for o in (0, 192, 480)]
        out += [(f"embedding {k} float16", f16[o : o + 16]) for o in (0, 96, 240)]
        out += [(f"embedding {k} float64", f64[0:64])]
        out += [(f"embedding {k} float32 big-endian", v.astype(">f4").tobytes()[:32])]
    for k, chip in enumerate(rec.chips):
        out.append((f"chip {k}", chip[75, 40:72].tobytes()))  # 96 bytes of the middle row of the face
    out += [(f"frame row {k}", row) for k, row in enumerate(frame_rows)]
    return out


def scan_bytes(what: str, data: bytes, pats: list[tuple[str, bytes]]) -> list[str]:
    found = []
    if JPEG_RE.search(data):
        found.append(f"{what}: JPEG image")
    if PNG_MAGIC in data:
        found.append(f"{what}: PNG image")
    found += [f"{what}: {name}" for name, pat in pats if pat in data]
    return found


def scan_text(what: str, text: str, pats: list[tuple[str, bytes]]) -> list[str]:
    """Text can carry binary only encoded: look inside base64, and for long lists of numbers."""
    found = scan_bytes(what, text.encode(errors="replace"), pats)
    for m in B64_RE.finditer(text):
        s = m.group(0)
        try:
            raw = base64.b64decode(s + "=" * (-len(s) % 4))
        except (binascii.Error, ValueError):
            continue
        found += scan_bytes(f"{what} (base64)", raw, pats)
    if NUM_RUN_RE.search(text):
        found.append(f"{what}: a run of 16 or more numbers (an array?)")
    return found


def decrypted_spool_rows(cfg: Config) -> list[bytes]:
    from edge.core.keys import storage_key
    from edge.device.publisher import SPOOL_FILE, STORAGE_KEY
    from edge.device.spool import Spool

    path = cfg.device.data_dir / SPOOL_FILE
    if not path.exists():
        return []
    spool = Spool(path, storage_key(cfg.device.keys_dir, STORAGE_KEY))
    try:
        return [r.topic.encode() + b"\n" + r.payload for r in spool.fetch_after(0, 1_000_000)]
    finally:
        spool.close()


# ----------------------------------------------------------------------------------- the test


def test_non_matching_people_leave_no_trace(
    faces_dir: Path, clip: tuple[Path, dict[str, Any]], tmp_path: Path, plain_broker: Any,  # noqa: F811
    debug_logs: io.StringIO,
) -> None:
    from edge.core.keys import generate_device_keys
    from edge.device.audit.runtime import ServiceAudit
    from edge.device.pipeline import FrameReport, Pipeline, Stages, build_stages, run_loop
    from edge.device.publisher import AlertPublisher

    video, truth = clip
    logging.getLogger("lfr_edge.test").debug("privacy-test canary")
    cfg = load_config(write_config(tmp_path, plain_broker.uri))
    generate_device_keys(cfg.device.keys_dir)
    stages = build_stages(cfg)
    wl = enrol(stages, faces_dir)
    rec = RecordingEmbedder(stages.vision.embedder)
    stages = Stages(dataclasses.replace(stages.vision, embedder=rec), stages.policy)
    frame_rows: list[bytes] = []
    prefix = cfg.topic_prefix

    class SampleFrames:
        def on_frame(self, report: FrameReport) -> None:
            frame = report.frame
            if frame.seq % 6 == 0:
                h, w = frame.image.shape[:2]
                frame_rows.append(frame.image[h // 4, w // 2 : w // 2 + 32].tobytes())

    with Collector(plain_broker, "#") as got:
        pipeline: list[Pipeline] = []
        audit = ServiceAudit(cfg, counters=lambda: pipeline[0].counters)
        publisher = AlertPublisher.from_config(cfg, on_drop=audit.spool_drop_hook())
        # The heartbeat carries the camera's counts too, as the appliance's does: they must leak nothing either.
        publisher.status_provider = lambda: dataclasses.replace(
            publisher.own_status(), cameras=(pipeline[0].status(),) if pipeline else ()
        )
        audit.attach_spool(publisher.enqueue)
        publisher.start()
        audit.start(wl)
        probes: list[F32] = []
        holder = recording_holder(wl, probes)
        pipeline.append(Pipeline(cfg, stages, holder, publisher, observer=SampleFrames()))
        counters = run_loop(pipeline[0], f"file:{video}")
        dep = audit.stop(counters, wl)
        assert dep is not None
        assert publisher.flush(20), "audit records were not all acknowledged by the broker"
        publisher.stop()
        got.wait_for(1, topic_suffix="/status")
        messages = list(got.messages)

    # The loop really saw, embedded and compared these people (otherwise the test proves nothing).
    assert counters.frames == truth["frames"] == N_FRAMES
    assert counters.faces_seen > 0 and len(rec.vectors) > 0
    assert counters.embeddings == len(rec.vectors)
    assert counters.matches == 0
    assert counters.non_match_discarded > 0
    assert pipeline[0].tracker.tracks == [] or len(pipeline[0].tracker.tracks) == 0

    assert probes, "the loop compared no fused probe"
    n_embedded = len(rec.vectors)
    rec.vectors.extend(probes)  # look for the fused probes too
    pats = needles(rec, frame_rows)
    leaks: list[str] = []
    files = sorted(p for p in cfg.device.data_dir.rglob("*") if p.is_file())
    for p in files:
        leaks += scan_bytes(str(p.relative_to(tmp_path)), p.read_bytes(), pats)
    for row in decrypted_spool_rows(cfg):
        leaks += scan_bytes("spool row (decrypted)", row, pats)
    log_text = debug_logs.getvalue()
    assert '"msg":"privacy-test canary"' in log_text, "DEBUG logging did not reach the capture"
    for n, line in enumerate(log_text.splitlines(), 1):
        leaks += scan_text(f"log line {n}", line, pats)
    for n, m in enumerate(messages):
        leaks += scan_bytes(f"MQTT {m.topic} #{n}", m.payload, pats)
        leaks += scan_text(f"MQTT {m.topic} #{n}", m.payload.decode(errors="replace"), pats)
    assert not leaks, "traces of non-matching people:\n" + "\n".join(leaks[:20])

    # Nothing on disk but the audit log, the (empty) spool and its SQLite side files.
    names = {str(p.relative_to(cfg.device.data_dir)) for p in files}
    assert all(n.startswith(("audit/segment-", "spool.db")) or n == "audit/.lock" for n in names), names
    assert decrypted_spool_rows(cfg) == []

    # Only status and audit went out; no alert.
    topics = {m.topic for m in messages}
    assert topics <= {f"{prefix}/status", f"{prefix}/audit"}, topics
    statuses = [json.loads(m.payload) for m in messages if m.topic == f"{prefix}/status"]
    assert statuses and {s["state"] for s in statuses} <= {"online", "offline"}
    for s in statuses:
        alerts = s.get("alerts", 0)  # the publisher's {raised, ...} or the loop's count
        assert (alerts.get("raised", 0) if isinstance(alerts, dict) else alerts) == 0
    audit_msgs = [json.loads(m.payload) for m in messages if m.topic == f"{prefix}/audit"]
    kinds = {r["kind"] for r in audit_msgs}
    assert kinds <= AUDIT_KINDS_EXPECTED, kinds - AUDIT_KINDS_EXPECTED
    on_disk = [r.to_dict() for r in al.iter_records(cfg.device.data_dir / "audit")]
    assert sorted({r["seq"] for r in audit_msgs}) == [r["seq"] for r in on_disk]  # every record was published

    # The deployment record: produced at stop, published, with the right counts.
    published = [r["fields"] for r in audit_msgs if r["kind"] == al.DEPLOYMENT_RECORD]
    assert len(published) == 1
    for d in (dep, published[0]):
        assert d["frames_processed"] == N_FRAMES
        assert d["faces_detected"] == counters.faces_seen
        assert d["faces_compared"] == n_embedded
        assert d["alerts_raised"] == 0
        assert d["non_match_templates_discarded"] == counters.non_match_discarded
        assert d["non_match_templates_retained"] == 0
        assert d["location"] == "Privacy Test Square"
        assert (d["watchlist_version"], d["watchlist_size"]) == (7, len(wl.subjects))
        assert d["models"]["embedder"]["id"] == cfg.models.embedder
        assert d["thresholds"]["threshold"] == 4.5 and d["thresholds"]["units"] == "snorm"


def test_lfr_edge_run_records_the_deployment_at_stop(
    clip: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lfr-edge run` on a replay ends with a deployment record whose counts match the replay."""
    from edge.cli.main import main
    from edge.core.keys import generate_device_keys
    from edge.lab.localbroker import free_port

    video, _ = clip

    path = write_config(tmp_path, f"mqtt://127.0.0.1:{free_port()}")  # no broker: records stay spooled
    cfg = load_config(path)
    generate_device_keys(cfg.device.keys_dir)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:  # `run` installs its own stdout handler; later tests must not log into this test's capture
        assert main(["run", "--config", str(path), "--source", f"file:{video}",
                     "--events", str(tmp_path / "events.jsonl")]) == 0  # fmt: skip
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    capsys.readouterr()
    assert list((cfg.device.data_dir / "audit").glob("segment-*.jsonl")), "`lfr-edge run` wrote no audit log"
    assert main(["deployment", "report", "--config", str(path), "--json"]) == 0
    deps = json.loads(capsys.readouterr().out)
    assert len(deps) == 1
    d = deps[0]
    assert d["ended"] == "stopped" and d["frames_processed"] == N_FRAMES
    assert d["alerts_raised"] == 0 and d["location"] == "Privacy Test Square"
    assert d["faces_detected"] > 0
    assert main(["audit", "verify", "--config", str(path)]) == 0


def test_the_scanner_finds_planted_traces() -> None:
    """A scan that can find nothing proves nothing: plant each kind of trace and see it caught."""
    import cv2

    rng = np.random.default_rng(3)
    v = rng.normal(size=128).astype(np.float32)
    v /= np.linalg.norm(v)
    chip = rng.integers(0, 255, size=(150, 150, 3), dtype=np.uint8)
    rec = RecordingEmbedder(None)
    rec.vectors.append(v)
    rec.chips.append(chip)
    pats = needles(rec, [])
    ok, jpg = cv2.imencode(".jpg", chip)
    ok2, png = cv2.imencode(".png", chip)
    assert ok and ok2
    noise = rng.bytes(4096)
    assert scan_bytes("clean", noise, pats) == []
    assert scan_text("clean", '{"msg":"frame 12 processed","faces":3,"fps":24.5}', pats) == []
    assert scan_bytes("jpeg", noise + jpg.tobytes(), pats) == ["jpeg: JPEG image"]
    assert scan_bytes("png", noise + png.tobytes(), pats) == ["png: PNG image"]
    assert "f16: embedding 0 float16" in scan_bytes("f16", noise + v.astype(np.float16).tobytes(), pats)
    assert "f32: embedding 0 float32" in scan_bytes("f32", v.tobytes() + noise, pats)
    assert "raw: chip 0" in scan_bytes("raw", chip.tobytes(), pats)
    b64 = base64.b64encode(v.tobytes()).decode()
    assert "log (base64): embedding 0 float32" in scan_text("log", f'{{"emb":"{b64}"}}', pats)
    crop = base64.b64encode(jpg.tobytes()).decode()
    assert "mqtt (base64): JPEG image" in scan_text("mqtt", f'{{"crop":"{crop}"}}', pats)
    listed = json.dumps({"embedding": [round(float(x), 4) for x in v]})
    assert "log: a run of 16 or more numbers (an array?)" in scan_text("log", listed, pats)
