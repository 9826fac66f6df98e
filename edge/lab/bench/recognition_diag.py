"""`lfr-edge bench recognition --diagnose OUT.npz`: the end-to-end video, measured per face and per track.

    lfr-edge bench recognition --faces ../shared/data/faces/lfw --half fit --limit 900 --diagnose fit.npz
    lfr-edge bench recognition --levers fit.npz [--json]

The full bench (edge/lab/bench/recognition.py) answers one question per run: who did the appliance
alert on with the config in force. Tuning the loop (quality gate, how often a track is embedded,
how its views are fused) needs many such answers, so the diagnostic runs the device's own camera
stack (detector with its tile schedule, tracker, aligner, quality measures, embedder with flip) over
the same kind of generated video once, and embeds *every* detected face, gated or not, keeping per
face: frame, track, ground-truth person, the quality measures and the descriptor. `levers` then
replays the device's per-track logic (edge.core.vision.track.Track) offline for each lever and
scores the probes exactly as the Matcher does (S-norm against the cohort), so a lever costs seconds,
not a 12-minute run.

Honesty rules built in:
- tuning runs on the *fit* half (`--half fit`): the eval half stays for the one final figure;
- the fit half is also where the shipped cohort came from, so every cast member's own cohort row is
  taken out (it would otherwise flatter both sides of S-norm) and K is scaled down to keep the same
  share of the cohort (the shipped K=100 of its rows); the diagnostic says how many rows it dropped;
- every lever reports strangers too: the highest stranger track score and how many strangers pass
  the strict threshold, since fusing more views moves the impostor scores as well.

Privacy: the descriptors written are of public LFW faces, in a lab file the operator names; the
device never runs this.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.core.errors import InputError
from edge.core.types import F32, U8

SIZE = (1280, 720)
# Shares of stranger *tracks* (people passing) let through, for the per-track operating curve:
# resolvable with the ~700 strangers of a 1,000-identity fit-half cast, unlike the strict point.
CURVE_FPIR = (0.005, 0.01, 0.02)


@dataclass(frozen=True, slots=True)
class FaceRecords:
    """Every detected face of the video, one row each (arrays of equal length, frame order)."""

    frame: npt.NDArray[np.int32]
    track: npt.NDArray[np.int32]
    person: npt.NDArray[np.int32]  # index into people, -1 when the box is nobody's cell/time
    iod: F32
    sharpness: F32
    yaw: F32
    roll: F32
    det_score: F32
    vec: F32  # (N, D) the device's probe descriptor of this face alone (flip as configured)


def record_video(
    video: Path, cast: Any, people: list[str], cfg: Any, say: Callable[[str], None], align: str = "mesh"
) -> FaceRecords:
    """Run the camera stack over `video`, embedding every face; ground truth from `cast`.

    `align` "mesh" cuts the embedded chips as the device does (the face mesh its recipe names; the
    gate judges the keypoint fit); "ours" cuts them from the detector's keypoints alone."""
    import cv2

    from edge.core.vision.quality import pose_angles, sharpness
    from edge.core.vision.stack import FROM_RECIPE, StackUse, build_vision_stack
    from edge.core.vision.track import Tracker
    from edge.lab.bench.recognition import who_is_there

    st = build_vision_stack(cfg, StackUse.CAMERA, landmarks=None if align == "ours" else FROM_RECIPE)
    t = cfg.tracking
    tracker = Tracker(t.iou_threshold, t.max_centre_dist, t.max_missed_frames, t.best_k, t.max_tracks, dim=st.embed_dim)
    index = {p: i for i, p in enumerate(people)}
    cols: dict[str, list[Any]] = {
        k: [] for k in ("frame", "track", "person", "iod", "sharp", "yaw", "roll", "det", "vec")
    }
    cap = cv2.VideoCapture(str(video))
    f = -1
    t0 = time.monotonic()
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            f += 1
            img: U8 = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8)
            full = st.detector_light is None or (tracker.frame_idx + 1) % st.tiles_every_n == 0
            dets = (st.detector if full or st.detector_light is None else st.detector_light).detect(img)
            tracks, _ = tracker.update(dets.boxes)
            if len(dets) == 0:
                continue
            mats = st.aligner.matrices(dets.keypoints)
            iod, yaw, roll = pose_angles(dets.keypoints)
            sharp = sharpness(st.gate_regions(img, mats))
            chips, _ = st.cut_chips(img, dets.keypoints, mats)
            vecs = st.embedder.embed(chips)
            for i in range(len(dets)):
                who = who_is_there(cast, SIZE, f, [float(v) for v in dets.boxes[i]])
                cols["frame"].append(f)
                cols["track"].append(tracks[i].id)
                cols["person"].append(-1 if who is None else index[who.identity])
            cols["iod"].append(iod)
            cols["sharp"].append(sharp)
            cols["yaw"].append(yaw)
            cols["roll"].append(roll)
            cols["det"].append(dets.scores)
            cols["vec"].append(vecs)
            if f % 500 == 0:
                say(f"diagnose: frame {f}, {len(cols['frame'])} faces, {time.monotonic() - t0:.0f} s")
    finally:
        cap.release()

    def cat(k: str) -> F32:
        return np.concatenate(cols[k]).astype(np.float32)

    return FaceRecords(
        frame=np.asarray(cols["frame"], np.int32), track=np.asarray(cols["track"], np.int32),
        person=np.asarray(cols["person"], np.int32), iod=cat("iod"), sharpness=cat("sharp"), yaw=cat("yaw"),
        roll=cat("roll"), det_score=cat("det"), vec=cat("vec"),
    )  # fmt: skip


def cast_cohort(cohort: F32, own: F32, top_k: int) -> tuple[F32, int, int]:
    """The cohort without the cast's own rows (fit-half tuning only), and K scaled to the same share.

    A cast member's cohort row is the mean of all their photos, so it is their nearest row by far;
    one row per cast member is dropped (the nearest to their own descriptor, when closer than any
    two different people are in practice)."""
    sims = own @ cohort.T
    nearest = sims.argmax(axis=1)
    close = sims[np.arange(own.shape[0]), nearest] > 0.9
    drop = np.unique(nearest[close])
    keep = np.setdiff1d(np.arange(cohort.shape[0]), drop)
    k = max(10, round(top_k * keep.size / cohort.shape[0]))
    return np.ascontiguousarray(cohort[keep]), int(drop.size), k


def diagnose(
    args: Any, out: Path, progress: Callable[[str], None] | None = None, align: str = "ours"
) -> dict[str, Any]:
    """Cast, enrolment (the back office's own engine), video, per-face records → `out` (.npz)."""
    from edge.backoffice.enrolment.enrol import ModelChoice, enrol_folder, face_analyser, scan_faces
    from edge.core.config import Config
    from edge.core.imageio import decode_rgb
    from edge.core.vision.scoring import load_scoring
    from edge.lab.bench.recognition import choose_cast, write_video

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    faces = args.faces
    cast = choose_cast(faces, args.seed, args.enrol_max, args.limit, args.frames_per_person, args.gap, half=args.half)
    cfg = Config()
    if args.config:
        import yaml

        extra = yaml.safe_load(args.config.read_text()) or {}
        cfg = Config.model_validate({**cfg.model_dump(), **{k: {**cfg.model_dump()[k], **v} for k, v in extra.items()}})
    wd = Path(tempfile.mkdtemp(prefix="lfr-diagnose-"))
    try:
        custody = wd / "custody"
        for subject, photos in cast.enrolled.items():
            d = custody / subject
            d.mkdir(parents=True, exist_ok=True)
            for p in photos:
                (d / Path(p).name).symlink_to((faces / p).resolve())
        say(f"enrolling {len(cast.enrolled)} subjects")
        analyse, model = face_analyser(ModelChoice())
        en = enrol_folder(custody, scan_faces(custody), analyse, model)
        video = wd / "street.mp4"
        n_frames = write_video(video, faces, cast, SIZE, 15.0, (args.face_min, args.face_max))
        say(f"video: {n_frames} frames, {len(cast.shown)} people")
        people = sorted({a.identity for a in cast.shown})
        rec = record_video(video, cast, people, cfg, say, align)
        # Each shown person's own descriptor (the shown photo, as a still) finds their cohort row.
        own = []
        for a in sorted(cast.shown, key=lambda a: a.identity):
            v = analyse(decode_rgb(faces / a.photo))  # type: ignore[arg-type]
            own.append(v.embedding if v.embedding is not None else np.zeros(rec.vec.shape[1], np.float32))
        scoring = load_scoring(cfg.models.embedder)
        if scoring.norm is None:
            raise InputError(f"{cfg.models.embedder}: no cohort; the diagnostic scores as the device does (S-norm)")
        own_all = np.concatenate([np.stack(own), en.templates]) if en.templates.size else np.stack(own)
        cohort, dropped, k = (
            cast_cohort(scoring.norm.cohort, own_all, scoring.norm.top_k)
            if args.half == "fit"
            else (scoring.norm.cohort, 0, scoring.norm.top_k)
        )
        strict = scoring.operating_point("strict").threshold
        shown = {a.identity: a for a in cast.shown}
        np.savez_compressed(
            out, frame=rec.frame, track=rec.track, person=rec.person, iod=rec.iod, sharpness=rec.sharpness,
            yaw=rec.yaw, roll=rec.roll, det_score=rec.det_score, vec=rec.vec,
            people=np.asarray(people), enrolled=np.asarray([shown[p].enrolled for p in people]),
            subjects=np.asarray(en.subject_ids), templates=en.templates, template_subject=en.template_subject,
            cohort=cohort, top_k=np.int32(k), strict=np.float32(strict), half=np.asarray(args.half),
        )  # fmt: skip
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    return {"out": str(out), "faces": int(rec.frame.size), "frames": n_frames, "people": len(people),
            "subjects": len(en.subject_ids), "cohort_rows_dropped": dropped, "top_k": k, "half": args.half,
            "align": align}  # fmt: skip


# ------------------------------------------------------------------------------------------ levers


@dataclass(frozen=True, slots=True)
class Lever:
    """One way of running the per-track logic; defaults are the shipped config before issue 15."""

    name: str
    min_sharpness: float = 10.0
    min_det_score: float = 0.6
    max_yaw: float = 35.0
    max_roll: float = 30.0
    min_iod: float = 12.0
    every_n: int = 5
    best_k: int = 3
    fusion: str = "mean"  # mean | weighted (quality-rank-weighted mean)
    also_single: bool = False  # also match each new view alone (max of fused and single)


@dataclass(slots=True)
class LeverResult:
    lever: Lever
    enrolled_people: int
    enrolled_alerted: int
    wrong_subject: int
    strangers: int
    strangers_alerted: int
    stranger_top: list[float] = field(default_factory=list)  # highest stranger track scores
    tpir_at_track_fpir: dict[float, float] = field(default_factory=dict)  # CURVE_FPIR → share found
    embeddings: int = 0

    def row(self) -> dict[str, Any]:
        return {
            "lever": self.lever.name, "alerted_share": round(self.enrolled_alerted / max(self.enrolled_people, 1), 4),
            "enrolled_alerted": self.enrolled_alerted, "enrolled_people": self.enrolled_people,
            "wrong_subject": self.wrong_subject, "strangers_alerted": self.strangers_alerted,
            "strangers": self.strangers, "stranger_top3": [round(x, 3) for x in self.stranger_top[:3]],
            "embeddings": self.embeddings,
            "tpir_at_track_fpir": {str(k): round(v, 4) for k, v in self.tpir_at_track_fpir.items()},
        }  # fmt: skip


def _rank(iod: F32, sharp: F32, yaw: F32, det: F32) -> F32:
    # Quality.rank, vectorised (edge/core/types.py).
    frontal = np.maximum(0.0, 1.0 - np.abs(yaw) / 90.0)
    r: F32 = (iod * frontal * np.sqrt(np.minimum(sharp, 500.0)) * det).astype(np.float32)
    return r


def evaluate(d: Any, lever: Lever, threshold: float | None = None) -> LeverResult:
    """Replay the device's per-track logic under `lever`; score as the Matcher does."""
    from edge.core.vision.scoring import CohortNorm
    from edge.core.vision.track import Track

    thr = float(d["strict"]) if threshold is None else threshold
    ok = (
        (d["iod"] >= lever.min_iod)
        & (np.abs(d["yaw"]) <= lever.max_yaw)
        & (np.abs(d["roll"]) <= lever.max_roll)
        & (d["det_score"] >= lever.min_det_score)
        & (d["sharpness"] >= lever.min_sharpness)
    )
    rank = _rank(d["iod"], d["sharpness"], d["yaw"], d["det_score"])
    vec = d["vec"]
    probes: list[F32] = []
    probe_track: list[int] = []
    frames = d["frame"]
    tracks_seen: dict[int, Track] = {}
    for i in np.flatnonzero(ok).tolist():
        tid = int(d["track"][i])
        tr = tracks_seen.get(tid)
        if tr is None:
            tr = tracks_seen[tid] = Track(tid, np.zeros(4, np.float32), 0, 0, lever.best_k, dim=vec.shape[1],
                                          weighted=lever.fusion == "weighted")  # fmt: skip
        fidx = int(frames[i])
        if not tr.wants_embedding(float(rank[i]), fidx, lever.every_n):
            continue
        tr.add_embedding(vec[i], float(rank[i]), fidx)
        probes.append(tr.fused())
        probe_track.append(i)
        if lever.also_single:
            probes.append(vec[i])
            probe_track.append(i)
    n_emb = sum(t.embeddings for t in tracks_seen.values())
    people = [str(p) for p in d["people"]]
    enrolled = d["enrolled"]
    subjects = [str(s) for s in d["subjects"]]
    in_list = set(subjects)
    res = LeverResult(lever, sum(bool(e) and p in in_list for p, e in zip(people, enrolled, strict=True)), 0, 0,
                      int((~enrolled).sum()), 0)  # fmt: skip
    res.embeddings = n_emb
    if not probes:
        return res
    P = np.stack(probes).astype(np.float32)
    norm = CohortNorm(d["cohort"], int(d["top_k"]))
    tmpl = d["templates"].astype(np.float32)
    g_mu, g_sd = norm.stats(tmpl)
    p_mu, p_sd = norm.stats(P)
    s = CohortNorm.apply(P @ tmpl.T, g_mu, g_sd, p_mu, p_sd)
    ts = d["template_subject"]
    if ts.size != len(subjects):  # several templates per subject: best per subject
        s = np.maximum.reduceat(s, np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]]), axis=1)
    best = s.argmax(axis=1)
    score = s[np.arange(s.shape[0]), best]
    alerted: set[str] = set()
    strangers_hit: set[str] = set()
    stranger_best: dict[str, float] = {}
    enrolled_best: dict[str, float] = {}  # per enrolled person: best score of a probe naming them
    for k, i in enumerate(probe_track):
        pi = int(d["person"][i])
        if pi < 0:
            continue
        who = people[pi]
        name = subjects[int(best[k])]
        sc = float(score[k])
        if not enrolled[pi]:
            stranger_best[who] = max(stranger_best.get(who, -1e9), sc)
        elif name == who:
            enrolled_best[who] = max(enrolled_best.get(who, -1e9), sc)
        if sc < thr:
            continue
        if name == who:
            alerted.add(who)
        elif enrolled[pi]:
            res.wrong_subject += 1
        else:
            strangers_hit.add(who)
    res.enrolled_alerted = len(alerted)
    res.strangers_alerted = len(strangers_hit)
    res.stranger_top = sorted(stranger_best.values(), reverse=True)[:10]
    # The per-track operating curve: the share of enrolled people found at the threshold that lets
    # through a given share of strangers. A lever that only adds looks per track moves along this
    # curve (as lowering the threshold would); one that helps lifts it.
    sb = np.sort(np.asarray(list(stranger_best.values()), np.float64))[::-1]
    eb = np.asarray(list(enrolled_best.values()), np.float64)
    for rate in CURVE_FPIR:
        k = int(rate * res.strangers)  # strangers allowed above the threshold
        t = float(sb[k]) if k < sb.size else -np.inf
        res.tpir_at_track_fpir[rate] = float((eb > t).sum()) / max(res.enrolled_people, 1)
    return res


# The first row: the shipped defaults (edge/core/config.py; tests/test_bench_recognition.py keeps them in step).
SHIPPED = Lever("shipped: gate 10/0.6, every 5th frame, best 3, fused only")


def default_levers() -> list[Lever]:
    """The shipped loop, each lever alone against it, two combinations, and a ceiling."""
    base = SHIPPED
    out = [base]
    for sh in (5.0, 0.0):
        out.append(replace(base, name=f"quality.min_sharpness {sh:g}", min_sharpness=sh))
    out.append(replace(base, name="quality.min_det_score 0.5", min_det_score=0.5))
    out.append(replace(base, name="quality.max_yaw_deg 45", max_yaw=45.0))
    for n in (1, 2, 3):
        out.append(replace(base, name=f"tracking.embed_every_n {n}", every_n=n))
    for k in (1, 5, 8):
        out.append(replace(base, name=f"tracking.best_k {k}", best_k=k))
    out.append(replace(base, name="quality-weighted fusion", fusion="weighted"))
    out.append(replace(base, name="tracking.match_each_view", also_single=True))
    for n in (2, 3):
        out.append(
            replace(
                base,
                name=f"every {('2nd', '3rd')[n - 2]} frame + sharpness 5 + each view",
                every_n=n,
                min_sharpness=5.0,
                also_single=True,
            )
        )
    out.append(
        Lever("ceiling: every face of every frame, no gate, each view", 0.0, 0.0, 90.0, 90.0, 0.0, 1, 3, "mean", True)
    )
    return out


def run_levers(path: Path, levers: Sequence[Lever] | None = None) -> dict[str, Any]:
    if not path.exists():
        raise InputError(f"--levers {path}: no such diagnostic file")
    d = dict(np.load(path, allow_pickle=False))
    rows = [evaluate(d, lv).row() for lv in (levers or default_levers())]
    return {"file": str(path), "half": str(d["half"]), "strict": float(d["strict"]), "faces": int(d["frame"].size),
            "levers": rows}  # fmt: skip


def format_levers(doc: dict[str, Any]) -> str:
    lines = [f"{doc['file']} ({doc['half']} half, {doc['faces']} faces), strict {doc['strict']:.3f}",
             f"{'lever':56s} {'alerted (strict)':>16s} {'wrong':>5s} {'strangers':>10s}  top stranger scores  "
             f"embeds  found at " + " / ".join(f"{100 * r:g}" for r in CURVE_FPIR) + " % of stranger tracks"]  # fmt: skip
    for r in doc["levers"]:
        lines.append(
            f"{r['lever']:56s} {r['enrolled_alerted']:4d}/{r['enrolled_people']:4d} {100 * r['alerted_share']:5.1f}% "
            f"{r['wrong_subject']:5d} {r['strangers_alerted']:4d}/{r['strangers']:5d}  "
            f"{' '.join(f'{x:.2f}' for x in r['stranger_top3']):20s} {r['embeddings']:6d}  "
            + " / ".join(f"{100 * v:.1f}" for v in r["tpir_at_track_fpir"].values())
        )
    return "\n".join(lines)
