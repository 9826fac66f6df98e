"""What `watchlist build` tells the operator: every image, every subject, and the bundle written.

One report, two renderings: a table for the terminal and JSON (`--json`) for tools. Subject ids
and image names are the back office's own folder names; no template or image data is reported.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from edge.backoffice.enrolment.image import ImageStatus
from edge.core.types import F32


class SubjectStatus(str, enum.Enum):
    ENROLLED = "enrolled"  # in the bundle with at least one template
    LEFT_OUT = "left_out"  # no usable template: not in the bundle


@dataclass(slots=True)
class ImageOutcome:
    subject_id: str
    image: str  # path relative to the faces folder
    status: ImageStatus
    detail: str = ""
    warnings: list[str] = field(default_factory=list)
    best_cosine: float | None = None  # to the subject's other usable images, when cross-checked
    embedding: F32 | None = field(default=None, repr=False)

    @property
    def in_bundle(self) -> bool:
        return self.status is ImageStatus.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "subject_id": self.subject_id,
            "image": self.image,
            "status": self.status.value,
            "in_bundle": self.in_bundle,
            "detail": self.detail,
            "warnings": list(self.warnings),
            "best_cosine_to_others": None if self.best_cosine is None else round(self.best_cosine, 4),
        }


@dataclass(slots=True)
class SubjectOutcome:
    subject_id: str
    status: SubjectStatus
    images: int
    photos_fused: int  # usable photos fused into the subject's one template
    cross_checked: bool  # had two or more usable images to compare
    reason: str = ""  # why it was left out
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "subject_id": self.subject_id,
            "status": self.status.value,
            "images": self.images,
            "photos_fused": self.photos_fused,
            "cross_checked": self.cross_checked,
            "reason": self.reason,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True, slots=True)
class BundleSummary:
    path: str
    version: int
    subjects: int
    templates: int
    recipients: int
    size_bytes: int


@dataclass(slots=True)
class EnrolReport:
    images: list[ImageOutcome]
    subjects: list[SubjectOutcome]
    consistency_min_cosine: float | None
    meta_without_folder: list[str] = field(default_factory=list)
    bundle: BundleSummary | None = None

    @property
    def enrolled(self) -> list[SubjectOutcome]:
        return [s for s in self.subjects if s.status is SubjectStatus.ENROLLED]

    @property
    def left_out(self) -> list[SubjectOutcome]:
        return [s for s in self.subjects if s.status is SubjectStatus.LEFT_OUT]

    def counts(self) -> dict[str, int]:
        return {
            "n_images": len(self.images),
            "accepted": sum(o.in_bundle for o in self.images),
            "refused": sum(not o.in_bundle for o in self.images),
            "with_warnings": sum(bool(o.warnings) for o in self.images),
            "inconsistent": sum(o.status is ImageStatus.INCONSISTENT for o in self.images),
            "subjects_enrolled": len(self.enrolled),
            "subjects_left_out": len(self.left_out),
            "photos_fused": sum(s.photos_fused for s in self.enrolled),
        }

    def to_json(self) -> dict[str, Any]:
        b = self.bundle
        return {
            "images": [o.to_json() for o in self.images],
            "subjects": [s.to_json() for s in self.subjects],
            **self.counts(),
            "subjects_without_template": [s.subject_id for s in self.left_out],
            "meta_without_folder": list(self.meta_without_folder),
            "consistency_min_cosine": self.consistency_min_cosine,
            "bundle": None
            if b is None
            else {
                "path": b.path,
                "version": b.version,
                "subjects": b.subjects,
                "templates": b.templates,
                "recipients": b.recipients,
                "bytes": b.size_bytes,
            },
        }

    def dump_json(self, out: TextIO) -> None:
        out.write(json.dumps(self.to_json(), indent=2) + "\n")

    def print_tables(self, out: TextIO) -> None:
        _table(
            out,
            ("image", "status", "detail"),
            [(o.image, o.status.value, _image_detail(o)) for o in self.images],
        )
        out.write("\n")
        _table(
            out,
            ("subject", "status", "photos fused", "detail"),
            [
                (s.subject_id, s.status.value, f"{s.photos_fused}/{s.images}", _subject_detail(s))
                for s in self.subjects
            ],
        )
        c = self.counts()
        out.write(
            f"{c['accepted']} of {c['n_images']} image(s) in the bundle, {c['refused']} left out "
            f"({c['inconsistent']} flagged as not matching their subject's other images), "
            f"{c['with_warnings']} with warnings; {c['subjects_enrolled']} subject(s) enrolled with "
            f"{c['photos_fused']} photo(s) fused into one template each, {c['subjects_left_out']} left out\n"
        )


def _image_detail(o: ImageOutcome) -> str:
    parts = [o.detail] if o.detail else []
    parts += [f"warning: {w}" for w in o.warnings]
    return "; ".join(parts)


def _subject_detail(s: SubjectOutcome) -> str:
    parts = [s.reason] if s.reason else []
    parts += [f"warning: {w}" for w in s.warnings]
    return "; ".join(parts)


def _table(out: TextIO, head: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(head)]
    widths[-1] = 0  # the last column is free text
    for row in (head, *rows):
        out.write("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")


def fmt_cosine(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"
