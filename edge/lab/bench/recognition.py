"""`lfr-edge bench recognition`: who the whole appliance alerts on, end to end, on faces nobody tuned on.

    lfr-edge bench recognition --faces ../shared/data/faces/lfw [--json]

The cast comes from the *eval* half of a labelled face folder (edge.lab.eval.identity_half: nothing
was fitted on those people). Every identity with two or more usable photos is enrolled from up
to `--enrol-max` of them and shown in the video with one photo that is *not* enrolled; every
identity with one photo is a stranger and is shown once. The watchlist therefore has some
hundreds of subjects, most of whom are never shown, as in a real deployment.

The path is the real one: `watchlist build` (back office: detect, align, embed, sign, encrypt),
`watchlist install`, a Mosquitto with TLS and an ACL, `lfr-edge run` on a generated 720p video,
and `alerts listen` verifying and unsealing what arrives. Each received alert is judged against
the video's ground truth by frame and position: right person, wrong person, or a stranger.
"""

from __future__ import annotations

import json
import math
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from edge.core.errors import InputError, RuntimeFailure
from edge.core.timefmt import format_utc
from edge.lab.localrig import backoffice_config, device_config, run_cli

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

DEVICE_ID = "bench-van"
GRID = (3, 2)  # cells across, down: one person at a time in each cell
LFW_CROP = (45, 205)  # rows/cols of a 250x250 LFW image kept around the face
LFW_FACE_PX = 110.0  # face width inside an LFW image


@dataclass(frozen=True, slots=True)
class Appearance:
    identity: str
    photo: str  # relative to the faces folder
    enrolled: bool
    cell: int
    first: int  # first and last frame (inclusive, 0-based)
    last: int


@dataclass(frozen=True, slots=True)
class Cast:
    enrolled: dict[str, list[str]]  # subject → enrolment photos (never the one shown)
    shown: list[Appearance]


def choose_cast(faces: Path, seed: int, enrol_max: int, limit: int | None, frames_per_person: int,
                gap: int, half: str = "eval") -> Cast:  # fmt: skip
    """`half`: "eval" for every reported figure; "fit" only to tune the loop (the diagnostic)."""
    from edge.lab.eval import load_dataset

    ds = load_dataset(faces, half=half)
    rng = np.random.default_rng(seed)
    by_id: dict[str, list[str]] = {}
    for path, ident in zip(ds.paths, ds.identity.tolist(), strict=True):
        by_id.setdefault(ds.names[ident], []).append(path)
    names = sorted(by_id)
    if limit is not None:
        names = [names[i] for i in np.sort(rng.permutation(len(names))[:limit])]
    enrolled: dict[str, list[str]] = {}
    people: list[tuple[str, str, bool]] = []
    for name in names:
        photos = list(rng.permutation(by_id[name]))
        if len(photos) >= 2:
            enrolled[name] = [str(p) for p in photos[1 : 1 + enrol_max]]
            people.append((name, str(photos[0]), True))
        else:
            people.append((name, str(photos[0]), False))
    order = rng.permutation(len(people))
    shown: list[Appearance] = []
    cells = GRID[0] * GRID[1]
    for k, i in enumerate(order.tolist()):
        name, photo, is_enrolled = people[i]
        cell, slot = k % cells, k // cells
        first = slot * (frames_per_person + gap)
        shown.append(Appearance(name, photo, is_enrolled, cell, first, first + frames_per_person - 1))
    return Cast(enrolled, shown)


def face_sprite(path: Path) -> tuple[U8, F32]:
    """RGB face region of an LFW photo and its feathered elliptical alpha (float 0..1)."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"{path}: not a readable image")
    a, b = LFW_CROP
    rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[a:b, a:b], np.uint8)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = ((xx - w / 2) / (0.46 * w)) ** 2 + ((yy - h / 2) / (0.50 * h)) ** 2
    return rgb, np.clip((1.0 - r) / 0.15, 0.0, 1.0).astype(np.float32)


def cell_centre(cell: int, size: tuple[int, int], t: float) -> tuple[float, float]:
    """Where a face is in its cell at time t in [0, 1]: a slow diagonal walk."""
    w, h = size
    cw, ch = w / GRID[0], h / GRID[1]
    cx0, cy0 = (cell % GRID[0]) * cw, (cell // GRID[0]) * ch
    return cx0 + cw * (0.35 + 0.3 * t), cy0 + ch * (0.45 + 0.1 * t)


def face_width(t: float, small: float, large: float) -> float:
    return small + (large - small) * t


def write_video(path: Path, faces: Path, cast: Cast, size: tuple[int, int], fps: float,
                face_px: tuple[float, float]) -> int:  # fmt: skip
    """Render the cast onto a textured background; returns the frame count."""
    import cv2

    n_frames = max(a.last for a in cast.shown) + 1
    rng = np.random.default_rng(1)
    low = rng.integers(40, 200, size=(9, 16, 3)).astype(np.uint8)
    bg = np.asarray(cv2.GaussianBlur(cv2.resize(low, size, interpolation=cv2.INTER_CUBIC), (0, 0), 3.0), np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise RuntimeFailure(f"{path}: OpenCV cannot write mp4 here")
    starts: dict[int, list[Appearance]] = {}
    for a in cast.shown:
        starts.setdefault(a.first, []).append(a)
    live: list[tuple[Appearance, U8, F32]] = []
    try:
        for f in range(n_frames):
            live = [x for x in live if x[0].last >= f]
            live += [(a, *face_sprite(faces / a.photo)) for a in starts.get(f, [])]
            frame = bg.copy()
            for a, sprite, alpha in live:
                t = (f - a.first) / max(a.last - a.first, 1)
                cx, cy = cell_centre(a.cell, size, t)
                paste_face(frame, sprite, alpha, cx, cy, face_width(t, *face_px))
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return n_frames


def paste_face(frame: U8, sprite: U8, alpha: F32, cx: float, cy: float, face_px: float) -> tuple[float, ...]:
    """Blend a face sprite into the frame, face `face_px` wide centred at (cx, cy); its box."""
    import cv2

    scale = face_px / LFW_FACE_PX
    side = max(8, round(sprite.shape[1] * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    s = cv2.resize(sprite, (side, side), interpolation=interp).astype(np.float32)
    a = cv2.resize(alpha, (side, side), interpolation=cv2.INTER_LINEAR)[:, :, None]
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    h, w = frame.shape[:2]
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    if xb <= xa or yb <= ya:
        return (0.0, 0.0, 0.0, 0.0)
    roi = frame[ya:yb, xa:xb].astype(np.float32)
    sa = a[ya - y0 : yb - y0, xa - x0 : xb - x0]
    ss = s[ya - y0 : yb - y0, xa - x0 : xb - x0]
    frame[ya:yb, xa:xb] = np.clip(roi * (1.0 - sa) + ss * sa + 0.5, 0, 255).astype(np.uint8)
    half = face_px / 2
    return (cx - half, cy - half * 1.1, cx + half, cy + half * 1.1)


def who_is_there(cast: Cast, size: tuple[int, int], frame: int, bbox: list[float]) -> Appearance | None:
    """The appearance whose cell holds the alert's box centre at that frame (±1 frame)."""
    w, h = size
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    cell = min(int(cx // (w / GRID[0])), GRID[0] - 1) + GRID[0] * min(int(cy // (h / GRID[1])), GRID[1] - 1)
    for a in cast.shown:
        if a.cell == cell and a.first - 1 <= frame <= a.last + 1:
            return a
    return None


@dataclass(frozen=True, slots=True)
class Outcome:
    enrolled_shown: int  # shown, and on the installed list
    failed_to_enrol_shown: int  # meant for the list, but no photo of them was usable
    enrolled_alerted: int
    strangers_shown: int
    strangers_alerted: int  # strangers who raised at least one alert
    false_alerts: int  # alerts naming someone other than the person there (strangers included)
    wrong_subject_alerts: int  # of those, on an enrolled person but naming another subject
    alerts: int
    unplaced_alerts: int  # alerts whose frame and position match nobody in the video

    @property
    def alerted_share(self) -> float:
        return self.enrolled_alerted / self.enrolled_shown if self.enrolled_shown else math.nan


def judge(cast: Cast, size: tuple[int, int], alerts: list[dict[str, Any]], in_list: set[str]) -> Outcome:
    """Alerts against the ground truth. People whose photos could not be enrolled (no usable face)
    are counted apart: they are on nobody's list, so they can be neither found nor missed."""
    alerted: set[str] = set()
    strangers_hit: set[str] = set()
    false_alerts = wrong = unplaced = 0
    for al in alerts:
        who = who_is_there(cast, size, int(al["frame_seq"]), list(al["bbox"]))
        if who is None:
            unplaced += 1
            false_alerts += 1
        elif who.identity == al["subject_id"]:
            alerted.add(who.identity)
        else:
            false_alerts += 1
            if who.enrolled:
                wrong += 1
            else:
                strangers_hit.add(who.identity)
    return Outcome(
        enrolled_shown=sum(a.enrolled and a.identity in in_list for a in cast.shown),
        failed_to_enrol_shown=sum(a.enrolled and a.identity not in in_list for a in cast.shown),
        enrolled_alerted=len(alerted),
        strangers_shown=sum(not a.enrolled for a in cast.shown),
        strangers_alerted=len(strangers_hit),
        false_alerts=false_alerts,
        wrong_subject_alerts=wrong,
        alerts=len(alerts),
        unplaced_alerts=unplaced,
    )


@dataclass(frozen=True, slots=True)
class RecognitionBenchParams:
    faces: Path  # labelled faces in <identity>/<image> layout (LFW)
    config: Path | None = None  # YAML merged into the device config (e.g. matching: {operating_point: balanced})
    enrol_max: int = 5  # enrolment photos per subject at most
    limit: int | None = None  # a seeded subset of this many identities
    frames_per_person: int = 24
    gap: int = 12  # empty frames between people in a cell (tracks end)
    face_min: float = 70.0  # face width in px when a person appears
    face_max: float = 130.0  # face width in px when they leave
    seed: int = 0
    work: Path | None = None  # keep the run's files here
    keep: bool = False  # keep the temporary folder
    half: str = "eval"  # identity half of the cast; "fit" only for tuning (docs/EVAL.md)

    def __post_init__(self) -> None:
        if self.half not in ("eval", "fit"):
            raise InputError(f"--half {self.half!r}: eval or fit")
        if self.enrol_max < 1 or self.frames_per_person < 2 or self.gap < 0:
            raise InputError("--enrol-max ≥ 1, --frames-per-person ≥ 2 and --gap ≥ 0 are required")


def run(args: RecognitionBenchParams, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    from edge.core.sysinfo import cpu_model
    from edge.lab.localbroker import MosquittoBroker, mosquitto_available

    if not mosquitto_available():
        raise InputError("bench recognition needs Debian's mosquitto (apt-get install mosquitto)")
    faces = args.faces
    size = (1280, 720)
    cast = choose_cast(faces, args.seed, args.enrol_max, args.limit, args.frames_per_person, args.gap, args.half)
    wd = args.work if args.work else Path(tempfile.mkdtemp(prefix="lfr-bench-recognition-"))
    wd.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    t_start = time.monotonic()
    passwords = {DEVICE_ID: secrets.token_urlsafe(16), "backoffice": secrets.token_urlsafe(16)}
    broker = MosquittoBroker(wd / "broker", tls=True, users=passwords).start()
    try:
        bo, dev = wd / "backoffice", wd / "device"
        run_cli("backoffice", "init", "--dir", str(bo / "keys"))
        run_cli("keys", "init", "--dir", str(dev / "keys"))
        custody = bo / "custody"
        for subject, photos in cast.enrolled.items():
            d = custody / subject
            d.mkdir(parents=True, exist_ok=True)
            for p in photos:
                (d / Path(p).name).symlink_to((faces / p).resolve())
        expires = format_utc(time.time() + 12 * 3600)
        bundle = bo / "watchlist.lfrw"
        say(f"enrolling {len(cast.enrolled)} subjects from {sum(map(len, cast.enrolled.values()))} photos")
        build = run_cli("watchlist", "build", "--faces", str(custody), "--sign", str(bo / "keys"),
                     "--to", str(dev / "keys" / "device_x25519.pub.pem"), "--expires", expires,
                     "--version", "1", "--out", str(bundle), "--json", timeout=3600)  # fmt: skip
        video = wd / "street.mp4"
        n_frames = write_video(video, faces, cast, size, 15.0, (args.face_min, args.face_max))
        say(f"video: {n_frames} frames, {len(cast.shown)} people")
        dev_cfg = device_config(DEVICE_ID, dev, bo, broker.uri, broker.ca_file, passwords[DEVICE_ID],
                                f"file:{video}", "bench recognition")  # fmt: skip
        dev_cfg["camera"]["realtime"] = False
        dev_cfg["mqtt"]["status_interval_s"] = 30
        dev_cfg["alerts"]["include_crop"] = False
        if args.config:
            extra = yaml.safe_load(args.config.read_text()) or {}
            for section, values in extra.items():
                dev_cfg.setdefault(section, {}).update(values)
        dev_yaml = dev / "lfr-edge.yaml"
        dev_yaml.write_text(yaml.safe_dump(dev_cfg, sort_keys=False))
        run_cli("watchlist", "install", str(bundle), "--config", str(dev_yaml))
        bo_cfg = backoffice_config(DEVICE_ID, dev, bo, broker.uri, broker.ca_file, passwords["backoffice"])
        bo_yaml = bo / "backoffice.yaml"
        bo_yaml.write_text(yaml.safe_dump(bo_cfg, sort_keys=False))
        # The listener writes to a file, not a pipe: a pipe nobody drains fills up and stalls it.
        received_path = bo / "received.jsonl"
        with received_path.open("w") as sink:
            listener = subprocess.Popen(
                [sys.executable, "-m", "edge", "alerts", "listen", "--config", str(bo_yaml), "--json"],
                stdout=sink, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        try:
            if not broker.wait_for_log("backoffice", timeout=30):
                raise RuntimeFailure("the back-office listener did not connect to the broker")
            time.sleep(0.5)  # the subscription lands before the first alert
            say("device running")
            t_run = time.monotonic()
            run_cli("run", "--config", str(dev_yaml), timeout=3600)
            run_s = time.monotonic() - t_run
            record = _deployment(dev_yaml)
            raised = int(record["alerts_raised"])
            # Every alert the device raised is acknowledged by the broker before run exits, or
            # spooled; wait until the listener has printed as many (or a quiet spell).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _count_alerts(received_path) < raised:
                time.sleep(0.5)
        finally:
            listener.terminate()
            listener.wait(timeout=30)
        out = received_path.read_text()
        status = json.loads(run_cli("watchlist", "status", "--config", str(dev_yaml), "--json").stdout or "{}")
    finally:
        broker.stop()
        if not args.keep and not args.work:
            shutil.rmtree(wd, ignore_errors=True)
    received = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    alerts = [r for r in received if r.get("event") == "alert"]
    rejected = [r for r in received if r.get("event") == "rejected"]
    in_list = _enrolled_subjects(build.stdout)
    outcome = judge(cast, size, alerts, in_list)
    return {
        "command": "lfr-edge bench recognition " + " ".join(sys.argv[3:]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model()},
        "faces": str(faces),
        "half": args.half,
        "watchlist": {"subjects": len(cast.enrolled), "enrolment_photos": sum(map(len, cast.enrolled.values())),
                      "build_report": _build_summary(build.stdout), "device_status": status},
        "video": {"frames": n_frames, "size": list(size), "people": len(cast.shown),
                  "frames_per_person": args.frames_per_person, "face_px": [args.face_min, args.face_max]},
        "outcome": {**asdict(outcome), "alerted_share": round(outcome.alerted_share, 4)},
        "device_alerts_raised": raised,
        "matching": record["thresholds"],
        "listener_rejected": len(rejected),
        "run_s": round(run_s, 1),
        "wall_s": round(time.monotonic() - t_start, 1),
    }  # fmt: skip


def _deployment(dev_yaml: Path) -> dict[str, Any]:
    """The device's own record of the run: alerts raised (to check none went missing), thresholds."""
    deps = json.loads(run_cli("deployment", "report", "--config", str(dev_yaml), "--json").stdout or "[]")
    return dict(deps[-1]) if deps else {"alerts_raised": 0, "thresholds": {}}


def _count_alerts(path: Path) -> int:
    try:
        return sum('"event": "alert"' in line for line in path.read_text().splitlines())
    except OSError:
        return 0


def _enrolled_subjects(stdout: str) -> set[str]:
    """Subjects that made it into the bundle (the rest were left out at enrolment: no usable photo)."""
    rep = json.loads(stdout)
    return {s["subject_id"] for s in rep.get("subjects", []) if s.get("status") == "enrolled"}


def _build_summary(stdout: str) -> Any:
    try:
        rep = json.loads(stdout)
    except json.JSONDecodeError:
        return None
    return {k: v for k, v in rep.items() if not isinstance(v, list)} if isinstance(rep, dict) else None


def format_text(r: dict[str, Any]) -> str:
    o = r["outcome"]
    m = r["matching"]
    return "\n".join([
        f"matching: {m.get('operating_point')} threshold {m.get('threshold')} {m.get('units')}; expected "
        f"{m.get('expected_false_alerts_per_10k_faces')} false alerts per 10,000 faces (model estimate)",
        f"watchlist: {r['watchlist']['subjects']} subjects ({r['watchlist']['enrolment_photos']} photos), "
        f"video: {r['video']['frames']} frames, {r['video']['people']} people",
        f"enrolled people shown: {o['enrolled_shown']}, alerted: {o['enrolled_alerted']} "
        f"({100 * o['alerted_share']:.1f} %); not enrollable (no usable photo), shown: {o['failed_to_enrol_shown']}",
        f"strangers shown: {o['strangers_shown']}, strangers alerted on: {o['strangers_alerted']}",
        f"false alerts: {o['false_alerts']} (wrong subject on an enrolled person: {o['wrong_subject_alerts']}, "
        f"unplaced: {o['unplaced_alerts']}); alerts received: {o['alerts']} of {r['device_alerts_raised']} "
        f"raised; rejected by the listener: {r['listener_rejected']}",
        f"device run: {r['run_s']} s; whole bench: {r['wall_s']} s",
    ])  # fmt: skip
