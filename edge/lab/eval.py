"""Accuracy harness: detection, 1:1 verification and open-set identification on an LFW-layout folder.

Every image goes through the appliance's own stages (detector → alignment → embedder) once per
variant; embeddings are cached in memory and all metrics are computed from those matrices.
Variants run side by side in one pass: embedder precision (int8 / fp32) × alignment (ours, from
the detector's keypoints; dlib, the 5-point shape predictor seeded from the same detection).
The JSON schema is documented in docs/EVAL.md.

Identification follows the NPL 2023 study of the Met's live facial recognition: a watchlist
(gallery) of one image per enrolled identity, mated probes = the enrolled identities' other
images, non-mated probes = every image of identities not enrolled; TPIR (rank-1 hit at or above
the threshold) at the thresholds that give FPIR = 1e-2, 1e-3 and 1/6000.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import math
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.core.config import Config
from edge.core.errors import InputError
from edge.core.imageio import decode_rgb
from edge.core.inference import default_models_dir, load_manifest, load_model, runtime_name, sha256_file
from edge.core.sysinfo import cpu_model
from edge.core.types import F32, U8, Rejection
from edge.core.vision.align import ChipTemplate
from edge.core.vision.analyze import primary_index
from edge.core.vision.scoring import CohortNorm, chip_landmarks, load_scoring, snorm
from edge.core.vision.stack import StackUse, build_vision_stack, same_chips

SCHEMA_VERSION = 1
VERIFY_FARS = (1e-3, 1e-4)
IDENT_FPIRS = (1e-2, 1e-3, 1.0 / 6000.0)
MISSING = -2.0  # score of a comparison with a face not found: below every threshold
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# The LFW developer split is cut once more by identity: the fit half built the shipped score
# cohort (models/build_cohort.py) and anything else fitted on faces; figures are reported on the
# eval half, whose people nothing was fitted on. The rule reads the second hex digit of the same
# sha1 the data's README uses to separate the developer split from the holdout.
HALVES = ("eval", "fit", "all")
SCORINGS = ("raw", "flip", "snorm", "device")  # device = flip + snorm: what the appliance does


# LFW label errors found while checking the highest-scoring impostor pairs by eye. Left in, they
# count a correct recognition as a false match, and at the rates an LFR threshold is set for
# (1e-6 per comparison) a single one moves the threshold. Applied wherever a dataset is loaded.
LABEL_ALIASES = {
    # Indonesia's foreign minister Hassan Wirajuda, filed under a second spelling.
    "Hasan_Wirayuda": "Hassan_Wirajuda",
}
LABEL_EXCLUDED = {
    # Shows Eduardo Duhalde (compared with the Eduardo_Duhalde images), not Carlos Ruckauf.
    "Carlos_Ruckauf/Carlos_Ruckauf_0001.jpg",
}


def identity_half(identity: str) -> str:
    """'fit' or 'eval' for an identity (folder) name."""
    return "fit" if hashlib.sha1(identity.encode("utf-8")).hexdigest()[1] in "01234567" else "eval"


@dataclass
class Dataset:
    root: Path
    paths: list[str]  # relative to root
    identity: npt.NDArray[np.int64]  # index into names, per image
    names: list[str]
    pairs: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]] | None = None
    pairs_skipped: int = 0


def load_dataset(root: Path, limit: int | None = None, seed: int = 0, half: str = "all") -> Dataset:
    """<identity>/<image> folders (labels.csv `path,identity` when present); a seeded identity subset.

    `half` keeps the identities of one half (identity_half) before any subset is drawn.

    `limit` keeps whole identities (shuffled with the seed) until about `limit` images, so
    genuine pairs and the enrolled/non-enrolled split stay meaningful on a subset.
    """
    if not root.is_dir():
        raise InputError(f"{root}: faces folder not found")
    labels = root / "labels.csv"
    items: list[tuple[str, str]] = []
    if labels.exists():
        with labels.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "identity"} <= set(reader.fieldnames):
                raise InputError(f"{labels}: expected columns path,identity")
            items = [(r["path"], r["identity"]) for r in reader]
    else:
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            items += [
                (str(p.relative_to(root)), d.name)
                for p in sorted(d.iterdir())
                if p.suffix.lower() in IMAGE_EXTS
            ]
    if not items:
        raise InputError(f"{root}: no images in <identity>/<image> layout")
    if half not in HALVES:
        raise InputError(f"--half: {half!r} is not one of {', '.join(HALVES)}")
    by_id: dict[str, list[str]] = {}
    for path, name in sorted(items):
        if path in LABEL_EXCLUDED:
            continue
        ident = LABEL_ALIASES.get(name, name)
        if half == "all" or identity_half(ident) == half:
            by_id.setdefault(ident, []).append(path)
    if not by_id:
        raise InputError(f"{root}: no identity of the {half} half")
    names = sorted(by_id)
    if limit is not None and limit < len(items):
        rng = random.Random(seed)
        order = names[:]
        rng.shuffle(order)
        chosen: list[str] = []
        total = 0
        for n in order:
            if total >= limit:
                break
            chosen.append(n)
            total += len(by_id[n])
        names = sorted(chosen)
    paths = [p for n in names for p in by_id[n]]
    identity = np.array([i for i, n in enumerate(names) for _ in by_id[n]], np.int64)
    return Dataset(root, paths, identity, names)


def load_pairs(ds: Dataset, pairs_file: Path) -> None:
    """`fold,is_same,path_a,path_b` (paths relative to the faces folder); pairs outside the set are skipped."""
    index = {p: i for i, p in enumerate(ds.paths)}
    a: list[int] = []
    b: list[int] = []
    same: list[bool] = []
    skipped = 0
    try:
        with pairs_file.open(newline="") as f:
            reader = csv.DictReader(f)
            need = {"is_same", "path_a", "path_b"}
            if not reader.fieldnames or not need <= set(reader.fieldnames):
                raise InputError(f"{pairs_file}: expected columns fold,is_same,path_a,path_b")
            for row in reader:
                ia, ib = index.get(row["path_a"]), index.get(row["path_b"])
                if ia is None or ib is None:
                    skipped += 1
                    continue
                a.append(ia)
                b.append(ib)
                same.append(row["is_same"].strip() in ("1", "true", "True"))
    except FileNotFoundError:
        raise InputError(f"{pairs_file}: pairs file not found") from None
    if not a:
        raise InputError(f"{pairs_file}: no pair has both images in {ds.root}")
    ds.pairs = (np.array(a, np.int64), np.array(b, np.int64), np.array(same, bool))
    ds.pairs_skipped = skipped


def all_pairs(
    identity: npt.NDArray[np.int64], impostors: int, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Every genuine pair plus a seeded sample of distinct impostor pairs."""
    ga: list[npt.NDArray[np.int64]] = []
    gb: list[npt.NDArray[np.int64]] = []
    for ident in np.unique(identity):
        idx = np.flatnonzero(identity == ident)
        if idx.size >= 2:
            i, j = np.triu_indices(idx.size, k=1)
            ga.append(idx[i])
            gb.append(idx[j])
    g_a = np.concatenate(ga) if ga else np.zeros(0, np.int64)
    g_b = np.concatenate(gb) if gb else np.zeros(0, np.int64)
    n = identity.size
    rng = np.random.default_rng(seed)
    total = n * (n - 1) // 2 - g_a.size
    if impostors >= total // 2:
        # Small sets: enumerate every impostor pair and draw without replacement.
        i, j = np.triu_indices(n, k=1)
        diff = identity[i] != identity[j]
        i, j = i[diff], j[diff]
        pick = np.sort(rng.permutation(i.size)[: min(impostors, i.size)])
        i_a, i_b = i[pick].astype(np.int64), j[pick].astype(np.int64)
    else:
        # Large sets: oversample, drop same-identity and repeated pairs, keep the first `impostors`.
        a = rng.integers(0, n, size=3 * impostors + 100)
        b = rng.integers(0, n, size=3 * impostors + 100)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        ok = (identity[lo] != identity[hi]) & (lo != hi)
        key = lo[ok] * n + hi[ok]
        _, first = np.unique(key, return_index=True)
        keep = np.sort(first)[:impostors]
        i_a, i_b = lo[ok][keep], hi[ok][keep]
    same = np.concatenate([np.ones(g_a.size, bool), np.zeros(i_a.size, bool)])
    return np.concatenate([g_a, i_a]), np.concatenate([g_b, i_b]), same


def _threshold_at(neg_desc: F32, rate: float) -> tuple[float, float, bool]:
    """Threshold so that at most `rate` of negatives score above it (accept = score > threshold).

    Returns (threshold, achieved rate, limited); limited = fewer negatives than 1/rate, so the
    rate cannot be resolved and the threshold is the highest negative score (achieved rate 0).
    """
    n = neg_desc.size
    if n == 0:
        return math.nan, math.nan, True
    k = math.floor(rate * n)
    limited = n * rate < 1.0
    thr = float(neg_desc[min(k, n - 1)])
    achieved = float(np.count_nonzero(neg_desc > thr)) / n
    return thr, achieved, limited


def verification(scores: F32, same: npt.NDArray[np.bool_]) -> dict[str, Any]:
    gen = scores[same]
    imp = np.sort(scores[~same])[::-1]
    out: dict[str, Any] = {
        "genuine_pairs": int(gen.size),
        "impostor_pairs": int(imp.size),
        "genuine_mean": float(gen[gen > MISSING].mean()) if (gen > MISSING).any() else math.nan,
        "impostor_mean": float(imp[imp > MISSING].mean()) if (imp > MISSING).any() else math.nan,
        "tar_at_far": [],
    }
    for far in VERIFY_FARS:
        thr, achieved, limited = _threshold_at(imp, far)
        out["tar_at_far"].append(
            {"far": far, "tar": float(np.mean(gen > thr)) if gen.size else math.nan,
             "threshold": thr, "far_achieved": achieved, "limited": limited}
        )  # fmt: skip
    out["eer"], out["eer_threshold"] = _eer(gen, imp)
    return out


def _eer(gen: F32, imp: F32) -> tuple[float, float]:
    if gen.size == 0 or imp.size == 0:
        return math.nan, math.nan
    thr = np.unique(np.concatenate([gen, imp]))
    g = np.sort(gen)
    i = np.sort(imp)
    frr = np.searchsorted(g, thr, side="right") / g.size  # genuine at or below t: rejected
    far = 1.0 - np.searchsorted(i, thr, side="right") / i.size  # impostors above t: accepted
    j = int(np.argmin(np.abs(frr - far)))
    return float((frr[j] + far[j]) / 2), float(thr[j])


@dataclass
class IdentSplit:
    gallery: npt.NDArray[np.int64]  # (G, n) image indices per enrolled identity, fused into one template
    gallery_identity: npt.NDArray[np.int64]
    mated: npt.NDArray[np.int64]
    non_mated: npt.NDArray[np.int64]
    enrolled_identities: int
    failed_to_enrol: int = 0


def identification_split(
    identity: npt.NDArray[np.int64],
    has_face: npt.NDArray[np.bool_],
    seed: int,
    enrol_fraction: float = 0.25,
    gallery_photos: int = 1,
) -> IdentSplit:
    """Seeded: enrol `enrol_fraction` of identities with more than `gallery_photos` images, each
    from `gallery_photos` of them (fused into one template, as `watchlist build` does).

    The default, a quarter with one photo, leaves ≥ 6,000 non-mated probes on the whole LFW
    developer split, so FPIR = 1/6000 is resolvable there (half would leave 5,469).
    """
    rng = random.Random(seed)
    ids, counts = np.unique(identity, return_counts=True)
    eligible = [int(i) for i, c in zip(ids, counts, strict=True) if c >= gallery_photos + 1]
    rng.shuffle(eligible)
    enrolled = sorted(eligible[: round(enrol_fraction * len(eligible))])
    gallery: list[list[int]] = []
    g_ident: list[int] = []
    mated: list[int] = []
    failed = 0
    for ident in enrolled:
        idx = [int(i) for i in np.flatnonzero(identity == ident)]
        usable = [i for i in idx if has_face[i]]
        if len(usable) < gallery_photos:
            failed += 1  # too few images of this person yield a face: cannot be put on the list
            continue
        g = rng.sample(usable, gallery_photos)
        gallery.append(g)
        g_ident.append(ident)
        mated += [i for i in idx if i not in g]
    # Identities that failed to enrol are neither mated nor non-mated: they were meant to be listed.
    not_enrolled = ~np.isin(identity, enrolled)
    return IdentSplit(
        np.array(gallery, np.int64).reshape(len(gallery), gallery_photos), np.array(g_ident, np.int64),
        np.array(mated, np.int64), np.flatnonzero(not_enrolled).astype(np.int64), len(gallery), failed,
    )  # fmt: skip


def top1_scores(
    emb: F32,
    has_face: npt.NDArray[np.bool_],
    split: IdentSplit,
    probes: npt.NDArray[np.int64],
    stats: tuple[F32, F32] | None,
    norm: CohortNorm | None,
) -> tuple[F32, npt.NDArray[np.int64]]:
    """Each probe's best score against the split's fused gallery templates, and whose it is.

    `stats` are the per-image cohort statistics (probe side); the gallery side is computed on the
    fused templates, as the device computes it on the watchlist it holds.
    """
    if probes.size == 0 or split.gallery.shape[0] == 0:
        return np.zeros(probes.size, np.float32), np.zeros(probes.size, np.int64)
    gal = emb[split.gallery].mean(axis=1)
    gal /= np.maximum(np.linalg.norm(gal, axis=1, keepdims=True), 1e-12)
    s = emb[probes] @ gal.T
    if norm is not None and stats is not None:
        g_mu, g_sd = norm.stats(gal.astype(np.float32))
        mu, sd = stats
        s = CohortNorm.apply(s, g_mu, g_sd, mu[probes], sd[probes])
    best = np.argmax(s, axis=1)
    score = s[np.arange(probes.size), best].astype(np.float32)
    score[~has_face[probes]] = MISSING
    return score, split.gallery_identity[best]


def identification(
    emb: F32,
    has_face: npt.NDArray[np.bool_],
    identity: npt.NDArray[np.int64],
    split: IdentSplit,
    stats: tuple[F32, F32] | None = None,
    norm: CohortNorm | None = None,
) -> dict[str, Any]:
    """Open-set identification; with `norm` (and per-image `stats`) scores are S-normalised."""
    m_score, m_ident = top1_scores(emb, has_face, split, split.mated, stats, norm)
    n_score, _ = top1_scores(emb, has_face, split, split.non_mated, stats, norm)
    hit = m_ident == identity[split.mated]
    n_desc = np.sort(n_score)[::-1]
    out: dict[str, Any] = {
        "gallery_size": int(split.gallery.shape[0]),
        "gallery_photos": int(split.gallery.shape[1]),
        "failed_to_enrol": split.failed_to_enrol,
        "mated_probes": int(split.mated.size),
        "non_mated_probes": int(split.non_mated.size),
        "rank1_hit_rate": float(hit[m_score > MISSING].mean()) if (m_score > MISSING).any() else math.nan,
        "tpir_at_fpir": [],
    }
    for fpir in IDENT_FPIRS:
        thr, achieved, limited = _threshold_at(n_desc, fpir)
        tpir = float(np.mean(hit & (m_score > thr))) if m_score.size else math.nan
        out["tpir_at_fpir"].append(
            {"fpir": fpir, "tpir": tpir, "threshold": thr, "fpir_achieved": achieved, "limited": limited}
        )
    return out


def _mesh_aligner(models_dir: Path, embedder_id: str, num_threads: int) -> Any:
    """The face mesh the embedder's recipe names, else the manifest's face mesh (to measure it
    for an embedder whose recipe cuts chips from the detector's keypoints)."""
    from edge.core.vision.landmarks import MeshAligner, MeshLandmarker

    mesh_id = chip_landmarks(embedder_id, models_dir) or next(
        (e.id for e in load_manifest(models_dir).values() if e.role == "landmarks"), None
    )
    if mesh_id is None:
        raise InputError(f"--align mesh: {models_dir}/MANIFEST.json has no face-mesh model (role landmarks)")
    return MeshAligner(MeshLandmarker(load_model(mesh_id, models_dir, num_threads=num_threads)))


def _model_id(v: str) -> str:
    """A precision names the shipped dlib embedder; anything else is a manifest embedder id."""
    return f"dlib_resnet_v1_{v}" if v in ("int8", "fp32") else v


def _progress(i: int, n: int, t0: float, show: bool) -> None:
    if not show:
        return
    if i == n or i % 25 == 0:
        rate = i / max(time.monotonic() - t0, 1e-9)
        eta = (n - i) / rate if rate > 0 else 0.0
        print(f"\reval: {i}/{n} images, {rate:.1f}/s, ETA {eta:.0f}s   ", end="", file=sys.stderr, flush=True)
        if i == n:
            print(file=sys.stderr)


def _scored(plain: F32, mirror: F32, scoring: str) -> F32:
    """The descriptors a scoring mode compares: the chip's own, or chip and mirror averaged."""
    if scoring in ("flip", "device"):
        both = plain + mirror
        out: F32 = (both / np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        return out
    return plain


def run_eval(
    faces: Path,
    *,
    pairs: Path | None = None,
    variants: list[str] | None = None,
    aligns: list[str] | None = None,
    scorings: list[str] | None = None,
    half: str = "eval",
    limit: int | None = None,
    seed: int = 0,
    impostors: int = 500_000,
    enrol_fraction: float = 0.25,
    id_splits: int = 10,
    detector_id: str | None = None,
    models_dir: Path | None = None,
    cfg: Config | None = None,
    progress: bool = False,
    apply_gate: bool = False,
    calibrate: bool = False,
    gallery_photos: int = 1,
) -> dict[str, Any]:
    cfg = cfg or Config()
    variants = variants or ["int8", "fp32"]
    aligns = aligns or ["ours", "dlib"]
    scorings = scorings or ["raw", "device"]
    for a in aligns:
        if a not in ("ours", "mesh", "dlib"):
            raise InputError(f"--align: unknown alignment {a!r} (expected ours, mesh, dlib)")
    for sc in scorings:
        if sc not in SCORINGS:
            raise InputError(f"--scoring: unknown scoring {sc!r} (expected {', '.join(SCORINGS)})")
    mdir = models_dir or cfg.models.dir or default_models_dir()
    notes: list[str] = []
    mesh_aligner = None
    if "mesh" in aligns:
        mesh_aligner = _mesh_aligner(mdir, _model_id(variants[0]), cfg.models.num_threads)
    dlib_ref = None
    if "dlib" in aligns:
        from edge.core.vision.dlib_ref import DlibReference, dlib_available

        if dlib_available():
            dlib_ref = DlibReference()
        else:
            aligns = [a for a in aligns if a != "dlib"]
            notes.append("dlib alignment skipped: dlib-bin or face-recognition-models not installed")
    if not aligns:
        raise InputError("--align: nothing to evaluate")
    # S-norm needs the embedder's cohort; an embedder without one is scored without it (noted).
    norms: dict[str, CohortNorm | None] = {v: load_scoring(_model_id(v), mdir).norm for v in variants}
    # The alignment the device cuts each embedder's chips with: calibration measures that one.
    device_align = {v: "mesh" if chip_landmarks(_model_id(v), mdir) else "ours" for v in variants}
    if calibrate:
        for v, a in device_align.items():
            if a not in aligns:
                raise InputError(f"--calibrate: {_model_id(v)} cuts its chips with the '{a}' alignment; add {a} to --align")
    if any(sc in ("snorm", "device") for sc in scorings):
        for v, nm in norms.items():
            if nm is None:
                notes.append(f"{_model_id(v)} has no score cohort in the manifest: snorm/device score raw cosines")

    ds = load_dataset(faces, limit, seed, half)
    if pairs is not None:
        load_pairs(ds, pairs)
    det_id = detector_id or cfg.models.detector
    # The stills stack enrolment uses; flip is applied here, per scoring mode, from one pass of
    # plain and mirrored chips, and each alignment (ours, mesh, dlib) is cut here too.
    stacks = {
        v: build_vision_stack(cfg, StackUse.STILLS, models_dir=mdir, detector_id=det_id, embedder_id=_model_id(v),
                              flip=False, landmarks=None)
        for v in variants
    }  # fmt: skip
    stack = same_chips(list(stacks.values()))
    detector = stack.detector
    embedders = {v: s.embedder for v, s in stacks.items()}
    aligner = stack.aligner
    if aligner.kind is not ChipTemplate.DLIB150:
        # dlib's chips are dlib150 geometry; the mesh places the embedder's own template's points.
        notes += [f"dlib alignment skipped: {aligner.kind.value} embedder" for a in aligns if a == "dlib"]
        aligns = [a for a in aligns if a != "dlib"]
        if mesh_aligner is not None:
            from edge.core.vision.landmarks import MeshAligner

            mesh_aligner = MeshAligner(mesh_aligner.landmarker, aligner.size, aligner.kind)
    gate = stack.quality
    n = len(ds.paths)
    need_mirror = any(sc in ("flip", "device") for sc in scorings)
    pkeys = [f"{v}/{a}" for v in variants for a in aligns]
    plain = {k: np.zeros((n, embedders[k.split("/")[0]].dim), np.float32) for k in pkeys}
    mirror = {k: np.zeros_like(plain[k]) for k in pkeys} if need_mirror else plain
    has_face = np.zeros(n, bool)
    gated = np.zeros(n, bool)  # refused by the quality gate (only matters with apply_gate)
    n_faces = np.zeros(n, np.int64)
    rejections = {r.value: 0 for r in Rejection}
    timing = {"decode": 0.0, "detect": 0.0, "embed": 0.0, **{f"align_{a}": 0.0 for a in aligns}}
    unreadable = 0
    t0 = time.monotonic()
    for i, rel in enumerate(ds.paths):
        t = time.perf_counter()
        decoded = decode_rgb(ds.root / rel)
        if decoded is None:
            unreadable += 1
            _progress(i + 1, n, t0, progress)
            continue
        rgb: U8 = decoded
        t1 = time.perf_counter()
        det = detector.detect(rgb)
        t2 = time.perf_counter()
        timing["decode"] += t1 - t
        timing["detect"] += t2 - t1
        n_faces[i] = len(det)
        if len(det) == 0:
            _progress(i + 1, n, t0, progress)
            continue
        has_face[i] = True
        j = primary_index(det.boxes, rgb.shape[1], rgb.shape[0])
        chips: dict[str, Any] = {}
        for a in aligns:
            ta = time.perf_counter()
            if a == "ours":
                c, mats = aligner.align(rgb, det.keypoints[j : j + 1])
                q = gate.assess(det.keypoints[j : j + 1], det.scores[j : j + 1], stack.gate_regions(rgb, mats))[0]
                if q.rejection is not None:
                    rejections[q.rejection.value] += 1
                    gated[i] = True
            elif a == "mesh":
                assert mesh_aligner is not None
                c, _ = mesh_aligner.align(rgb, det.keypoints[j : j + 1])
            else:
                assert dlib_ref is not None
                c = aligner.align_with(rgb, dlib_ref.matrices(rgb, det.boxes[j : j + 1]))
            chips[a] = c.copy()  # the aligner's buffer is reused by the next call
            timing[f"align_{a}"] += time.perf_counter() - ta
        te = time.perf_counter()
        for v in variants:
            for a in aligns:
                plain[f"{v}/{a}"][i] = embedders[v].embed(chips[a])[0]
                if need_mirror:
                    mirror[f"{v}/{a}"][i] = embedders[v].embed(np.ascontiguousarray(chips[a][:, :, ::-1]))[0]
        timing["embed"] += time.perf_counter() - te
        _progress(i + 1, n, t0, progress)
    wall = time.monotonic() - t0

    if ds.pairs is not None:
        pa, pb, same = ds.pairs
        pairs_src = str(pairs)
    else:
        pa, pb, same = all_pairs(ds.identity, impostors, seed)
        pairs_src = f"all genuine pairs + {int((~same).sum())} seeded impostor pairs (seed {seed})"
    detected = has_face.copy()
    if apply_gate:
        # As on the device: a refused face is never embedded, so it counts as not acquired.
        has_face &= ~gated
    pair_ok = has_face[pa] & has_face[pb]
    split = identification_split(ds.identity, has_face, seed, enrol_fraction, gallery_photos)
    # At FPIR ≤ 1e-3 the threshold is set by a handful of non-mated probes, so one split's TPIR
    # has a large sampling error: repeat the identity split with further seeds (cheap: the
    # embeddings are cached) and report the spread.
    more = [
        identification_split(ds.identity, has_face, seed + k, enrol_fraction, gallery_photos)
        for k in range(1, id_splits)
    ]

    results: dict[str, Any] = {}
    calibrations: dict[str, Any] = {}
    for pk in pkeys:
        v, a = pk.split("/")
        for sc in scorings:
            k = f"{pk}/{sc}"
            e = _scored(plain[pk], mirror[pk], sc)
            norm = norms[v] if sc in ("snorm", "device") else None
            stats = norm.stats(e) if norm is not None else None
            s = np.einsum("ij,ij->i", e[pa], e[pb]).astype(np.float32)
            if stats is not None:
                mu, sd = stats
                s = snorm(s, mu[pa], sd[pa], mu[pb], sd[pb])
            s[~pair_ok] = MISSING
            results[k] = {
                "embedder": _model_id(v),
                "align": a,
                "scoring": sc,
                "units": "snorm" if stats is not None else "cosine",
                "verification": verification(s, same),
                "identification": _with_spread(
                    identification(e, has_face, ds.identity, split, stats, norm),
                    [identification(e, has_face, ds.identity, sp, stats, norm) for sp in more],
                ),
            }
            if calibrate and sc == "device" and a == device_align[v]:
                from edge.lab.calibration import calibrate_scoring

                calibrations[_model_id(v)] = calibrate_scoring(
                    e, has_face, ds.identity, stats, norm, [split, *more], results[k]
                )

    ref = "device" if "device" in scorings else scorings[0]

    def tar3(k: str) -> float:
        return float(results[f"{k}/{ref}"]["verification"]["tar_at_far"][0]["tar"])

    comparisons: dict[str, Any] = {}
    if "int8" in variants and "fp32" in variants:
        for a in aligns:
            d = 100.0 * (tar3(f"fp32/{a}") - tar3(f"int8/{a}"))
            comparisons[f"fp32_minus_int8_tar_at_far_1e-3_points/{a}/{ref}"] = round(d, 3)
            comparisons[f"int8_within_0.5_point/{a}/{ref}"] = d <= 0.5
    for ours in ("ours", "mesh"):
        if ours in aligns and "dlib" in aligns:
            for v in variants:
                d = 100.0 * (tar3(f"{v}/dlib") - tar3(f"{v}/{ours}"))
                comparisons[f"dlib_minus_{ours}_tar_at_far_1e-3_points/{v}/{ref}"] = round(d, 3)
                comparisons[f"{ours}_within_1_point/{v}/{ref}"] = d <= 1.0

    # Per-image agreement of the descriptors themselves (same face, different precision or
    # alignment): what the TAR differences above come from.
    agreement: dict[str, Any] = {}
    pairs_of = [(f"{v}/{a}", f"{v}/dlib") for v in variants for a in ("ours", "mesh") if a in aligns and "dlib" in aligns]
    pairs_of += [(f"int8/{a}", f"fp32/{a}") for a in aligns if "int8" in variants and "fp32" in variants]
    for k1, k2 in pairs_of:
        c = np.einsum("ij,ij->i", plain[k1][detected], plain[k2][detected])
        if c.size:
            agreement[f"{k1} vs {k2}"] = {"cosine_mean": round(float(c.mean()), 5),
                                          "cosine_p5": round(float(np.percentile(c, 5)), 5),
                                          "cosine_min": round(float(c.min()), 5)}  # fmt: skip
    comparisons["embedding_agreement"] = agreement

    with_face = int(detected.sum())
    out = {
        "schema": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "runtime": runtime_name(),
                    "num_threads": cfg.models.num_threads},
        "dataset": {
            "faces": str(faces), "images": n, "identities": len(ds.names), "limit": limit, "seed": seed,
            "half": half, "pairs": pairs_src, "pairs_skipped": ds.pairs_skipped, "unreadable": unreadable,
            "enrol_fraction": enrol_fraction, "identification_splits": id_splits, "gallery_photos": gallery_photos,
        },
        "models": {"detector": det_id, "embedders": {v: _model_id(v) for v in variants},
                   "sha256": {m.id: sha256_file(m.path) for m in (detector.model,
                              *(e.model for e in embedders.values()))}},
        "detection": {
            "images": n, "face_found": with_face, "no_face": n - with_face - unreadable,
            "exactly_one_face": int((n_faces == 1).sum()), "several_faces_primary_chosen": int((n_faces > 1).sum()),
            "face_found_rate": with_face / n if n else math.nan,
        },
        "quality_gate": {"applied": apply_gate, "rejections_ours": rejections,
                         "note": "refused faces count as not acquired" if apply_gate else
                         "gate measured on our chips and reported; not applied to the metrics"},
        "variants": results,
        "comparisons": comparisons,
        "timing_s": {"wall": round(wall, 2), **{k: round(v, 2) for k, v in timing.items()}},
        "notes": notes,
    }  # fmt: skip
    if calibrate:
        out["calibration"] = calibrations
    return out


def _with_spread(first: dict[str, Any], others: list[dict[str, Any]]) -> dict[str, Any]:
    """Add TPIR mean/min/max over all identity splits (the first one included)."""
    runs = [first, *others]
    spread = []
    for i, row in enumerate(first["tpir_at_fpir"]):
        t = np.array([r["tpir_at_fpir"][i]["tpir"] for r in runs], np.float64)
        thr = np.array([r["tpir_at_fpir"][i]["threshold"] for r in runs], np.float64)
        spread.append({"fpir": row["fpir"], "tpir_mean": float(t.mean()), "tpir_min": float(t.min()),
                       "tpir_max": float(t.max()), "threshold_mean": float(thr.mean())})  # fmt: skip
    first["splits"] = {"n": len(runs), "tpir_at_fpir": spread}
    return first


def format_text(r: dict[str, Any]) -> str:
    d = r["detection"]
    ds = r["dataset"]
    lines = [
        f"dataset: {ds['faces']}  {ds['images']} images, {ds['identities']} identities"
        + (f" (seeded subset, limit {ds['limit']}, seed {ds['seed']})" if ds["limit"] else ""),
        f"detector: {r['models']['detector']}  runtime: {r['machine']['runtime']}",
        f"detection: face found in {d['face_found']}/{d['images']} ({100 * d['face_found_rate']:.2f} %), "
        f"exactly one face {d['exactly_one_face']}, several (primary chosen) {d['several_faces_primary_chosen']}",
        "quality gate on our chips ("
        + ("applied: refused = not acquired" if r["quality_gate"]["applied"] else "reported, not applied")
        + "): "
        + ", ".join(f"{k} {v}" for k, v in r["quality_gate"]["rejections_ours"].items()),
        f"verification pairs: {ds['pairs']}"
        + (f" ({ds['pairs_skipped']} pairs naming images outside the set skipped)" if ds["pairs_skipped"] else ""),
        "",
        f"{'variant':<20} {'TAR@FAR1e-3':>11} {'TAR@FAR1e-4':>11} {'EER':>7}  "
        f"{'TPIR@1e-2':>9} {'TPIR@1e-3':>9} {'TPIR@1/6000':>11} {'thr@1/6000':>10}  (thresholds in each variant's units)",
    ]
    for k, v in r["variants"].items():
        t = v["verification"]["tar_at_far"]
        p = v["identification"]["tpir_at_fpir"]

        def pct(x: dict[str, Any], key: str) -> str:
            return f"{100 * x[key]:.2f}" + ("*" if x["limited"] else "")

        lines.append(
            f"{k:<20} {pct(t[0], 'tar'):>11} {pct(t[1], 'tar'):>11} {100 * v['verification']['eer']:>7.2f}  "
            f"{pct(p[0], 'tpir'):>9} {pct(p[1], 'tpir'):>9} {pct(p[2], 'tpir'):>11} {p[2]['threshold']:>10.3f}"
        )
    lines.append("")
    lines.append("identification over several identity splits: TPIR mean [min-max] in %")
    for k, v in r["variants"].items():
        sp = v["identification"].get("splits")
        if sp:
            cells = "  ".join(
                f"@{row['fpir']:.2g}: {100 * row['tpir_mean']:.1f} [{100 * row['tpir_min']:.1f}-{100 * row['tpir_max']:.1f}]"
                for row in sp["tpir_at_fpir"]
            )
            lines.append(f"{k:<20} n={sp['n']}  {cells}")
    first = next(iter(r["variants"].values()))["identification"]
    lines.append(
        f"identification: gallery {first['gallery_size']}, mated probes {first['mated_probes']}, "
        f"non-mated probes {first['non_mated_probes']}  (* = fewer negatives than 1/rate: not resolvable)"
    )
    for k, v in r["comparisons"].items():
        if k == "embedding_agreement":
            for pair, a in v.items():
                lines.append(f"descriptor cosine {pair}: mean {a['cosine_mean']:.4f}, p5 {a['cosine_p5']:.4f}, "
                             f"min {a['cosine_min']:.4f}")  # fmt: skip
        else:
            lines.append(f"{k}: {v}")
    for emb_id, cal in (r.get("calibration") or {}).items():
        pts = ", ".join(
            f"{name} {p['threshold']:.3f} (TPIR {100 * p['measured_tpir']:.1f} %, FPIR measured "
            f"{p['evidence']['fpir_measured']:.2g} vs predicted {p['evidence']['fpir_predicted']:.2g} "
            f"with {p['evidence']['identification_list_size']} subjects)"
            for name, p in cal["operating_points"].items()
        )
        lines.append(f"calibration {emb_id} (reference list {cal['reference_list_size']}): floor "
                     f"{cal['floor']:.3f}; {pts}")  # fmt: skip
    lines += [f"note: {n}" for n in r["notes"]]
    lines.append(f"time: {r['timing_s']['wall']} s")
    return "\n".join(lines)
