"""Back-office enrolment: custody images → templates → a signed, encrypted bundle.

Runs the same detector, aligner, quality gate and embedder as the device (edge.core.vision.analyze),
so a template is made exactly the way the van will make its probes. Each image is judged
(edge.backoffice.enrolment.image), each subject's usable images are cross-checked against each other
(edge.backoffice.enrolment.consistency), and the bundle is built from the subjects left with a template; the
others are reported (edge.backoffice.enrolment.report), and `--strict` refuses to build without them.
No image, chip or crop ever goes into the bundle.
"""

from __future__ import annotations

import csv
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge.backoffice.enrolment.consistency import consistency_min_cosine, inconsistent
from edge.backoffice.enrolment.image import Analyse, ImageStatus, analyzer_adapter
from edge.backoffice.enrolment.report import (
    BundleSummary,
    EnrolReport,
    ImageOutcome,
    SubjectOutcome,
    SubjectStatus,
    fmt_cosine,
)
from edge.backoffice.enrolment.templates import fuse_subject_templates
from edge.core.errors import InputError
from edge.core.imageio import decode_rgb
from edge.core.types import F32, Subject

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def scan_faces(root: Path) -> list[tuple[str, list[Path]]]:
    """(subject id = folder name, its images) sorted; refuses an empty or malformed folder."""
    if not root.is_dir():
        raise InputError(f"--faces {root}: not a directory")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        out.append((d.name, images))
    if not out:
        raise InputError(f"--faces {root}: no subject folders (expected one folder of images per subject)")
    return out


def read_meta(path: Path) -> dict[str, Subject]:
    """CSV with a header: subject_id, and optional category, priority, threshold columns."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise InputError(f"--meta {path}: cannot read ({e.strerror})") from None
    rows = list(csv.DictReader(text.splitlines()))
    if rows and "subject_id" not in rows[0]:
        raise InputError(f"--meta {path}: the header must have a subject_id column")
    known = {"subject_id", "category", "priority", "threshold"}
    out: dict[str, Subject] = {}
    for n, row in enumerate(rows, start=2):
        extra = set(row) - known - {None}
        if extra:
            raise InputError(
                f"--meta {path}:{n}: unknown column(s) {', '.join(sorted(str(e) for e in extra))}"
            )
        sid = (row.get("subject_id") or "").strip()
        if not sid:
            raise InputError(f"--meta {path}:{n}: empty subject_id")
        category = (row.get("category") or "").strip() or "wanted"
        try:
            priority = int((row.get("priority") or "1").strip())
        except ValueError:
            raise InputError(
                f"--meta {path}:{n}: priority {row.get('priority')!r} is not an integer"
            ) from None
        raw_thr = (row.get("threshold") or "").strip()
        threshold = None
        if raw_thr:
            try:
                threshold = float(raw_thr)
            except ValueError:
                threshold = math.nan
            # In the embedder's score units (S-norm for the shipped embedders), like matching.threshold;
            # a device never applies one below its own floor.
            if not -100.0 <= threshold <= 100.0:
                raise InputError(f"--meta {path}:{n}: threshold {raw_thr!r} is not a score in [-100, 100]")
        if sid in out:
            raise InputError(f"--meta {path}:{n}: subject {sid!r} listed twice")
        out[sid] = Subject(subject_id=sid, category=category, priority=priority, threshold=threshold)
    return out


@dataclass(frozen=True, slots=True)
class EnrolModel:
    """What enrolment needs from the embedder besides the analyser itself."""

    embedder_id: str
    sha256: str  # goes into the bundle header: devices running another embedder refuse the list
    consistency_min_cosine: float | None  # None: the manifest has no figure, images are not cross-checked
    # The face mesh the chips were cut with (None: detector keypoints): in the header too, so a
    # device cutting its probes another way refuses the list.
    landmarks_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """Which device-style config, models folder and models enrolment runs (None: the config's own)."""

    config: Path | None = None
    models_dir: Path | None = None
    embedder: str | None = None
    detector: str | None = None


def face_analyser(choice: ModelChoice) -> tuple[Analyse, EnrolModel]:
    """(image → verdict) using the device's own vision stack and thresholds, and the embedder facts."""
    from edge.core.config import Config, load_config
    from edge.core.inference import default_models_dir, load_manifest
    from edge.core.vision.analyze import FaceAnalyzer
    from edge.core.vision.scoring import chip_landmarks_sha256

    cfg = load_config(choice.config) if choice.config else Config()
    models_dir = choice.models_dir or cfg.models.dir or default_models_dir()
    embedder_id = choice.embedder or cfg.models.embedder
    entry = load_manifest(models_dir).get(embedder_id)
    if entry is None:
        raise InputError(f"--embedder {embedder_id!r} is not in {models_dir}/MANIFEST.json")
    analyzer = FaceAnalyzer.from_config(
        cfg,
        models_dir=models_dir,
        detector_id=choice.detector or cfg.models.detector,
        embedder_id=embedder_id,
    )
    model = EnrolModel(
        embedder_id,
        entry.sha256,
        consistency_min_cosine(entry, models_dir),
        chip_landmarks_sha256(embedder_id, models_dir),
    )
    return analyzer_adapter(analyzer), model


Step = Callable[[str], None]  # called with each image's path (relative to the folder) once judged


def enrol(
    root: Path, subjects: Sequence[tuple[str, list[Path]]], analyse: Analyse, step: Step | None = None
) -> list[ImageOutcome]:
    """Every image judged on its own, in folder order."""
    outcomes = []
    for sid, images in subjects:
        for path in images:
            rel = path.relative_to(root).as_posix()
            rgb = decode_rgb(path)
            if rgb is None:
                outcomes.append(ImageOutcome(sid, rel, ImageStatus.UNREADABLE, "not a readable image"))
            else:
                v = analyse(rgb)
                outcomes.append(ImageOutcome(sid, rel, v.status, v.detail, list(v.warnings), embedding=v.embedding))
            if step is not None:
                step(rel)
    return outcomes


def judge_subject(
    sid: str, images: list[ImageOutcome], min_cosine: float | None, keep: frozenset[str]
) -> SubjectOutcome:
    """Cross-check a subject's usable images and say whether it goes into the bundle.

    An image that does not match the subject's other images is left out unless the operator named it
    in `keep` (--keep-inconsistent) after looking at it: a wrong photo would put an innocent person on
    the watchlist, while a real change of appearance costs only that one template when the subject
    has others.
    """
    usable = [o for o in images if o.status is ImageStatus.OK and o.embedding is not None]
    warnings: list[str] = []
    cross_checked = min_cosine is not None and len(usable) >= 2
    if min_cosine is not None and cross_checked:
        best, flagged = inconsistent(np.stack([o.embedding for o in usable if o.embedding is not None]), min_cosine)
        for o, b, f in zip(usable, best.tolist(), flagged.tolist(), strict=True):
            o.best_cosine = float(b)
            if not f:
                continue
            what = (
                f"does not match the subject's other images (best cosine {fmt_cosine(b)} < {min_cosine:.3f}): "
                "a wrong photo, or a large change of appearance"
            )
            if o.image in keep:
                o.warnings.append(f"{what}; kept by --keep-inconsistent")
            else:
                o.status, o.detail = ImageStatus.INCONSISTENT, f"{what}; check it, then --keep-inconsistent {o.image}"
        n_dropped = sum(o.status is ImageStatus.INCONSISTENT for o in usable)
        if n_dropped:
            warnings.append(f"{n_dropped} image(s) left out for not matching the others")
    elif len(usable) == 1:
        warnings.append("one usable image: not cross-checked (nothing to compare it with)")
    elif min_cosine is None and len(usable) >= 2:
        warnings.append("not cross-checked: the embedder has no enrolment.consistency_min_cosine")
    templates = sum(o.status is ImageStatus.OK for o in images)
    if templates:
        return SubjectOutcome(sid, SubjectStatus.ENROLLED, len(images), templates, cross_checked, "", warnings)
    if not images:
        reason = "no image in the folder"
    elif usable:
        reason = "its usable images do not match each other; check them (a wrong photo?) and name the right ones with --keep-inconsistent"
    else:
        counts = Counter(o.status.value for o in images)
        reason = "no usable image (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")"
    return SubjectOutcome(sid, SubjectStatus.LEFT_OUT, len(images), 0, cross_checked, reason, warnings)


def _keep_list(root: Path, subjects_dirs: Sequence[tuple[str, list[Path]]], keep: Sequence[str]) -> frozenset[str]:
    known = {p.relative_to(root).as_posix() for _, imgs in subjects_dirs for p in imgs}
    for k in keep:
        if Path(k).as_posix() not in known:
            raise InputError(f"--keep-inconsistent {k}: no such image under --faces {root} (give SUBJECT/IMAGE)")
    return frozenset(Path(k).as_posix() for k in keep)


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A folder of custody images judged and turned into templates: what a bundle is built from."""

    report: EnrolReport
    subject_ids: list[str]  # enrolled subjects, in folder order
    templates: F32  # one fused template per enrolled subject (edge/backoffice/enrolment/templates.py)
    template_subject: npt.NDArray[np.int32]


def enrol_folder(
    root: Path,
    subjects_dirs: Sequence[tuple[str, list[Path]]],
    analyse: Analyse,
    model: EnrolModel,
    keep: frozenset[str] = frozenset(),
    meta_ids: set[str] | None = None,
    step: Step | None = None,
) -> Enrolment:
    """The one enrolment engine (`watchlist build` and the console): judge every image, cross-check
    each subject's photos, fuse the usable ones into the subject's template."""
    outcomes = enrol(root, subjects_dirs, analyse, step)
    by_subject: dict[str, list[ImageOutcome]] = {sid: [] for sid, _ in subjects_dirs}
    for o in outcomes:
        by_subject[o.subject_id].append(o)
    report = EnrolReport(
        images=outcomes,
        subjects=[judge_subject(sid, by_subject[sid], model.consistency_min_cosine, keep) for sid, _ in subjects_dirs],
        consistency_min_cosine=model.consistency_min_cosine,
        meta_without_folder=sorted(set(meta_ids or ()) - set(by_subject)),
    )
    left_out = {s.subject_id for s in report.left_out}
    enrolled = [sid for sid, _ in subjects_dirs if sid not in left_out]
    templates, template_subject = fuse_subject_templates(
        [[o.embedding for o in by_subject[sid] if o.status is ImageStatus.OK and o.embedding is not None]
         for sid in enrolled]
    )  # fmt: skip
    return Enrolment(report, enrolled, templates, template_subject)


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """`watchlist build`'s inputs, checked by the caller for form (paths, numbers), here for sense."""

    faces: Path
    sign: Path  # back-office Ed25519 private key, file or keys directory
    recipients: tuple[Path, ...]  # device X25519 public keys
    expires: str  # RFC 3339 with zone
    version: int
    out: Path
    meta: Path | None = None
    dtype: str = "float32"
    models: ModelChoice = ModelChoice()
    strict: bool = False
    keep_inconsistent: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What was built (bundle None when nothing was written), the per-image/per-subject report, and
    the warnings a person should read."""

    report: EnrolReport
    bundle: BundleSummary | None
    warnings: tuple[str, ...]


class BuildRefused(InputError):
    """No bundle written (no usable subject, or --strict with subjects left out); carries the report."""

    def __init__(self, message: str, result: BuildResult) -> None:
        self.result = result
        super().__init__(message)


def build_watchlist(req: BuildRequest, step: Step | None = None) -> BuildResult:
    """Enrol `req.faces` and write a signed bundle to `req.out`; raises BuildRefused (with the report)
    when there is nothing to build or --strict refuses, InputError for bad input."""
    from edge.core.keys import load_signing_key, load_x25519_public
    from edge.core.timefmt import parse_utc
    from edge.core.watchlist.bundle import build_bundle

    root = req.faces
    subjects_dirs = scan_faces(root)
    keep = _keep_list(root, subjects_dirs, req.keep_inconsistent)
    meta = read_meta(req.meta) if req.meta else {}
    expires = parse_utc(req.expires, "--expires")
    if expires <= time.time():
        raise InputError(f"--expires {req.expires} is in the past")
    signer = load_signing_key(req.sign)
    recipients = [load_x25519_public(p) for p in req.recipients]
    out = req.out
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: directory {out.parent} does not exist")
    analyse, model = face_analyser(req.models)

    done = enrol_folder(root, subjects_dirs, analyse, model, keep, set(meta), step)
    report = done.report
    warnings = [f"--meta lists {sid!r}, which has no folder under {root}" for sid in report.meta_without_folder]
    if model.consistency_min_cosine is None:
        warnings.append(
            f"{model.embedder_id} has no enrolment.consistency_min_cosine in its manifest entry; "
            "images were not cross-checked for a wrong photo"
        )
    left_out = [s.subject_id for s in report.left_out]
    if not report.enrolled:
        raise BuildRefused(
            f"no subject has a usable image ({', '.join(left_out)}); no bundle written (report above)",
            BuildResult(report, None, tuple(warnings)),
        )
    if left_out and req.strict:
        raise BuildRefused(
            f"--strict: {len(left_out)} subject(s) without a usable template: {', '.join(left_out)}; "
            "no bundle written (report above)",
            BuildResult(report, None, tuple(warnings)),
        )

    subjects = [meta.get(sid, Subject(subject_id=sid)) for sid in done.subject_ids]
    bundle = build_bundle(
        subjects=subjects,
        templates=done.templates,
        template_subject=done.template_subject,
        signer=signer,
        recipients=recipients,
        version=req.version,
        expires_at=expires,
        embedder_sha256=model.sha256,
        landmarks_sha256=model.landmarks_sha256,
        dtype=req.dtype,
        metadata={"built_by": "lfr-edge watchlist build"},
    )
    tmp = out.with_name(f".{out.name}.part")
    tmp.write_bytes(bundle)
    tmp.replace(out)
    summary = BundleSummary(
        str(out), req.version, len(subjects), len(done.template_subject), len(recipients), len(bundle)
    )
    report.bundle = summary
    if left_out:
        warnings.append(
            f"{len(left_out)} subject(s) left out of the bundle (no usable template): "
            f"{', '.join(left_out)}; see the report (--strict makes this an error)"
        )
    return BuildResult(report, summary, tuple(warnings))
