"""One custody image → a verdict: usable (with its template) or refused, and why.

The judgement is the device's own (detector, aligner, quality gate, embedder through
edge.core.vision.analyze); what is added here is the enrolment rule for pictures with several faces:
the primary face is taken when the others are clearly background (edge.core.vision.analyze.choose_primary),
with a warning, and the image is refused only when it is ambiguous who it is of.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.core.types import F32, U8
from edge.core.vision.analyze import BACKGROUND_MAX_AREA_RATIO, AnalyzedFace, PrimaryChoice, choose_primary


class ImageStatus(str, enum.Enum):
    OK = "ok"  # its template is in the bundle
    NO_FACE = "no_face"
    SEVERAL_FACES = "several_faces"  # faces of similar size: unclear who the image is of
    POOR_QUALITY = "poor_quality"  # the quality gate refused the primary face
    UNREADABLE = "unreadable"
    INCONSISTENT = "inconsistent"  # a good face that does not match the subject's other images


@dataclass(frozen=True, slots=True)
class FaceVerdict:
    status: ImageStatus
    detail: str = ""
    warnings: tuple[str, ...] = ()
    embedding: F32 | None = field(default=None, repr=False)


Analyse = Callable[[U8], FaceVerdict]


def judge(faces: Sequence[AnalyzedFace], width: int, height: int) -> FaceVerdict:
    """The verdict on one image from every face the analyser found in it."""
    boxes = np.stack([f.box for f in faces]) if faces else np.zeros((0, 4), np.float32)
    pick = choose_primary(boxes, width, height)
    if pick.choice is PrimaryChoice.NO_FACE or pick.index is None:
        return FaceVerdict(ImageStatus.NO_FACE, "no face found")
    if pick.choice is PrimaryChoice.AMBIGUOUS:
        if pick.runner_up_area_ratio >= BACKGROUND_MAX_AREA_RATIO:
            why = f"of similar size (the next at {pick.runner_up_area_ratio:.0%} of the largest's area)"
        else:
            why = "and a smaller one nearer the centre than the largest"
        return FaceVerdict(
            ImageStatus.SEVERAL_FACES,
            f"{pick.n_faces} faces {why}: unclear who the photo is of; custody images must show one person clearly",
        )
    warnings: tuple[str, ...] = ()
    if pick.choice is PrimaryChoice.WITH_BACKGROUND:
        warnings = (
            f"{pick.n_faces - 1} background face(s) ignored (largest at {pick.runner_up_area_ratio:.0%} "
            "of the primary's area); the largest, most central face was enrolled",
        )
    face = faces[pick.index]
    q = face.quality
    if q.rejection is not None or face.embedding is None:
        reason = q.rejection.value if q.rejection is not None else "not embedded"
        return FaceVerdict(
            ImageStatus.POOR_QUALITY,
            f"{reason} (interocular {q.interocular_px:.0f} px, sharpness {q.sharpness:.0f}, "
            f"yaw {q.yaw_deg:.0f}°, roll {q.roll_deg:.0f}°, score {q.det_score:.2f})",
            warnings,
        )
    return FaceVerdict(ImageStatus.OK, "", warnings, np.asarray(face.embedding, dtype=np.float32))


def analyzer_adapter(analyzer: Any) -> Analyse:
    """Image → verdict with an edge.core.vision.analyze.FaceAnalyzer (or anything with its analyze())."""

    def run(rgb: U8) -> FaceVerdict:
        return judge(analyzer.analyze(rgb), int(rgb.shape[1]), int(rgb.shape[0]))

    return run
