"""Back-office enrolment: custody images → templates → a signed, encrypted bundle.

Runs the same detector, aligner, quality gate and embedder as the device (edge.vision.analyze),
so a template is made exactly the way the van will make its probes. An image with no face,
several faces or a face the quality gate refuses is reported and left out; several good images of
one subject become several templates. No image, chip or crop ever goes into the bundle.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EXIT_OK, InputError
from edge.imageio import decode_rgb
from edge.types import F32, Subject
from edge.watchlist.templates import fuse_subject_templates

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
OK = "ok"


@dataclass(slots=True)
class ImageOutcome:
    subject_id: str
    image: str  # path relative to the faces folder
    status: str  # ok | no_face | several_faces | poor_quality | unreadable
    detail: str = ""
    embedding: F32 | None = field(default=None, repr=False)

    def report(self) -> dict[str, str]:
        return {
            "subject_id": self.subject_id,
            "image": self.image,
            "status": self.status,
            "detail": self.detail,
        }


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
            if not -1.0 <= threshold <= 1.0:
                raise InputError(f"--meta {path}:{n}: threshold {raw_thr!r} is not a cosine in [-1, 1]")
        if sid in out:
            raise InputError(f"--meta {path}:{n}: subject {sid!r} listed twice")
        out[sid] = Subject(subject_id=sid, category=category, priority=priority, threshold=threshold)
    return out


Analyse = Callable[[Any], tuple[str, str, F32 | None]]


def face_analyser(args: argparse.Namespace) -> tuple[Analyse, str]:
    """(image → (status, detail, embedding)) using the device's own vision stack and thresholds,
    and the embedder's sha256 that goes into the bundle header."""
    from edge.config import Config, load_config
    from edge.inference import default_models_dir, load_manifest
    from edge.vision.analyze import FaceAnalyzer

    cfg = load_config(args.config) if args.config else Config()
    models_dir = Path(args.models_dir) if args.models_dir else (cfg.models.dir or default_models_dir())
    embedder_id = args.embedder or cfg.models.embedder
    entry = load_manifest(models_dir).get(embedder_id)
    if entry is None:
        raise InputError(f"--embedder {embedder_id!r} is not in {models_dir}/MANIFEST.json")
    analyzer = FaceAnalyzer.from_config(
        cfg,
        models_dir=models_dir,
        detector_id=args.detector or cfg.models.detector,
        embedder_id=embedder_id,
        whole_frame_only=True,  # custody images are portraits; tiling is for wide camera frames
    )
    return analyzer_adapter(analyzer), entry.sha256


def analyzer_adapter(analyzer: Any) -> Analyse:
    def run(rgb: Any) -> tuple[str, str, F32 | None]:
        faces = analyzer.analyze(rgb)
        if len(faces) == 0:
            return "no_face", "no face found", None
        if len(faces) > 1:
            return "several_faces", f"{len(faces)} faces found; custody images must show one", None
        face = faces[0]
        if not face.quality.accepted:
            q = face.quality
            return (
                "poor_quality",
                f"{q.rejection.value} (interocular {q.interocular_px:.0f} px, "
                f"sharpness {q.sharpness:.0f}, yaw {q.yaw_deg:.0f}°, roll {q.roll_deg:.0f}°)",
                None,
            )
        return OK, "", np.asarray(face.embedding, dtype=np.float32)

    return run


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done = total, 0
        self.enabled = enabled and sys.stderr.isatty()
        self.t0 = time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / max(1, self.total))
        rate = self.done / max(1e-6, time.monotonic() - self.t0)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {rate:4.1f} img/s {label[:30]:<30}"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def enrol(
    root: Path, subjects: Sequence[tuple[str, list[Path]]], analyse: Analyse, progress: Progress
) -> list[ImageOutcome]:
    outcomes = []
    for sid, images in subjects:
        for path in images:
            rel = str(path.relative_to(root))
            rgb = decode_rgb(path)
            if rgb is None:
                outcomes.append(ImageOutcome(sid, rel, "unreadable", "not a readable image"))
            else:
                status, detail, emb = analyse(rgb)
                outcomes.append(ImageOutcome(sid, rel, status, detail, emb))
            progress.step(rel)
    progress.close()
    return outcomes


def print_table(outcomes: Sequence[ImageOutcome]) -> None:
    w_img = max([5, *(len(o.image) for o in outcomes)])
    print(f"{'image':<{w_img}}  {'status':<13}  detail")
    for o in outcomes:
        print(f"{o.image:<{w_img}}  {o.status:<13}  {o.detail}")


def run_build(args: argparse.Namespace) -> int:
    from edge.keys import load_signing_key, load_x25519_public
    from edge.watchlist.bundle import build_bundle, parse_time

    root = Path(args.faces)
    subjects_dirs = scan_faces(root)
    meta = read_meta(Path(args.meta)) if args.meta else {}
    expires = parse_time(args.expires, "--expires")
    if expires <= time.time():
        raise InputError(f"--expires {args.expires} is in the past")
    signer = load_signing_key(args.sign)
    recipients = [load_x25519_public(p) for p in args.to]
    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: directory {out.parent} does not exist")
    analyse, embedder_sha = face_analyser(args)

    total = sum(len(imgs) for _, imgs in subjects_dirs)
    outcomes = enrol(root, subjects_dirs, analyse, Progress(total, enabled=not args.json))
    by_subject: dict[str, list[ImageOutcome]] = {sid: [] for sid, _ in subjects_dirs}
    for o in outcomes:
        by_subject[o.subject_id].append(o)
    empty = [sid for sid, os_ in by_subject.items() if not any(o.status == OK for o in os_)]
    unknown_meta = sorted(set(meta) - set(by_subject))

    report: dict[str, Any] = {
        "images": [o.report() for o in outcomes],
        "accepted": sum(o.status == OK for o in outcomes),
        "refused": sum(o.status != OK for o in outcomes),
        "subjects_without_template": empty,
        "meta_without_folder": unknown_meta,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(outcomes)
        print(f"{report['accepted']} image(s) accepted, {report['refused']} refused")
        for sid in unknown_meta:
            print(f"warning: --meta lists {sid!r}, which has no folder under {root}", file=sys.stderr)
    if empty:
        raise InputError(
            f"no usable image for subject(s) {', '.join(empty)}; fix or remove their folders (report above)"
        )

    subjects = [meta.get(sid, Subject(subject_id=sid)) for sid, _ in subjects_dirs]
    templates, template_subject = fuse_subject_templates(
        [[o.embedding for o in by_subject[sid] if o.status == OK and o.embedding is not None] for sid, _ in subjects_dirs]
    )
    bundle = build_bundle(
        subjects=subjects,
        templates=templates,
        template_subject=template_subject,
        signer=signer,
        recipients=recipients,
        version=args.version,
        expires_at=expires,
        embedder_sha256=embedder_sha,
        dtype=args.dtype,
        metadata={"built_by": "lfr-edge watchlist build"},
    )
    tmp = out.with_name(f".{out.name}.part")
    tmp.write_bytes(bundle)
    tmp.replace(out)
    msg = (
        f"wrote {out}: version {args.version}, {len(subjects)} subjects, {len(template_subject)} templates, "
        f"{len(recipients)} recipient(s), {len(bundle)} bytes"
    )
    print(msg, file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK
