"""Still-image face analysis: detector → aligner → quality gate → embedder.

Used where a whole picture is judged at once (accuracy evaluation, watchlist enrolment, the demo),
with exactly the stages and thresholds the camera loop uses, so an enrolled template and a live
probe are made the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.core.config import Config
from edge.core.errors import InputError
from edge.core.types import F32, U8, Quality
from edge.core.vision.detect import FaceDetector
from edge.core.vision.stack import StackUse, VisionStack, build_vision_stack


@dataclass(frozen=True, slots=True)
class AnalyzedFace:
    box: F32  # (4,) x0, y0, x1, y1 in image px
    keypoints: F32  # (6, 2) image px, MediaPipe order
    score: float
    quality: Quality
    chip: U8  # (S, S, 3) RGB at the embedder's chip size, an owned copy
    matrix: F32  # (2, 3) image → chip
    embedding: F32 | None  # (dim,) L2-normalised; None when the gate rejected the face


def primary_index(boxes: F32, width: int, height: int) -> int:
    """The face a still image is 'of': large and central beats small or at the edge.

    Area weighted by (1 - centre distance / image size)², so a bystander's larger face at the
    border loses to the subject's face in the middle only when it is not much larger.
    """
    if boxes.shape[0] == 0:
        raise InputError("no faces to choose from")
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 - width / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2
    dist = np.hypot(cx, cy) / max(width, height)
    return int(np.argmax(area * np.clip(1.0 - dist, 0.0, 1.0) ** 2))


# (image, detector keypoints) → (chips, matrices): VisionStack.chips, or Aligner.align for a bare template.
ChipCut = Callable[[U8, F32], tuple[U8, F32]]


def primary_chip(detector: FaceDetector, cut: ChipCut, rgb: U8) -> U8 | None:
    """The chip (S, S, 3; a copy) of a still image's primary face; None when none is found."""
    det = detector.detect(rgb)
    if len(det) == 0:
        return None
    j = primary_index(det.boxes, rgb.shape[1], rgb.shape[0])
    chip: U8 = cut(rgb, det.keypoints[j : j + 1])[0][0].copy()
    return chip


# A second face counts as background only when its box has under half the primary's area (under
# ~0.71 of its width) and it sits farther from the image centre: then "largest and most central"
# names one person. Anything closer is two candidates of similar standing, and guessing between
# them could enrol a bystander.
BACKGROUND_MAX_AREA_RATIO = 0.5


class PrimaryChoice(enum.Enum):
    """How clearly a still image is of one person."""

    NO_FACE = "no_face"
    ONE_FACE = "one_face"
    WITH_BACKGROUND = "with_background"  # the primary face dominates; the others are background
    AMBIGUOUS = "ambiguous"  # another face is of similar size or more central


@dataclass(frozen=True, slots=True)
class PrimaryFace:
    choice: PrimaryChoice
    index: int | None  # the primary face (primary_index's choice); None when there is no face
    n_faces: int
    runner_up_area_ratio: float  # largest other face's area / the primary's; 0 when alone


def choose_primary(
    boxes: F32, width: int, height: int, *, max_area_ratio: float = BACKGROUND_MAX_AREA_RATIO
) -> PrimaryFace:
    """primary_index's face, and whether every other face is clearly background to it: smaller
    than `max_area_ratio` of its area and farther from the image centre."""
    n = int(boxes.shape[0])
    if n == 0:
        return PrimaryFace(PrimaryChoice.NO_FACE, None, 0, 0.0)
    i = primary_index(boxes, width, height)
    if n == 1:
        return PrimaryFace(PrimaryChoice.ONE_FACE, i, 1, 0.0)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    dist = np.hypot((boxes[:, 0] + boxes[:, 2]) / 2 - width / 2, (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2)
    others = np.arange(n) != i
    ratio = float(area[others].max() / max(float(area[i]), 1e-6))
    background = ratio < max_area_ratio and bool(np.all(dist[others] > dist[i]))
    choice = PrimaryChoice.WITH_BACKGROUND if background else PrimaryChoice.AMBIGUOUS
    return PrimaryFace(choice, i, n, ratio)


class FaceAnalyzer:
    """Every face of a still image, judged and embedded by a VisionStack built for stills."""

    def __init__(self, stack: VisionStack, *, embed_rejected: bool = False) -> None:
        if stack.use is not StackUse.STILLS:
            raise InputError("FaceAnalyzer needs a vision stack built for stills (StackUse.STILLS)")
        self.stack = stack
        self.detector = stack.detector
        self.embedder = stack.embedder
        self.aligner = stack.aligner
        self.gate = stack.quality
        # Evaluation measures the embedder on every face it can; the device never embeds rejects.
        self.embed_rejected = embed_rejected

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        *,
        models_dir: Path | None = None,
        detector_id: str | None = None,
        embedder_id: str | None = None,
        embed_rejected: bool = False,
    ) -> FaceAnalyzer:
        """The configured models and thresholds (or the named models), built as stills are."""
        stack = build_vision_stack(
            cfg, StackUse.STILLS, models_dir=models_dir, detector_id=detector_id, embedder_id=embedder_id
        )
        return cls(stack, embed_rejected=embed_rejected)

    def analyze(self, rgb: U8) -> list[AnalyzedFace]:
        """Every face in the image, in detector-score order."""
        det = self.detector.detect(rgb)
        if len(det) == 0:
            return []
        fit = self.aligner.matrices(det.keypoints)
        quals = self.gate.assess(det.keypoints, det.scores, self.stack.gate_regions(rgb, fit))
        chips, mats = self.stack.cut_chips(rgb, det.keypoints, fit)
        todo = np.array([q.accepted or self.embed_rejected for q in quals])
        emb = self.embedder.embed(chips[todo]) if todo.any() else np.zeros((0, self.embedder.dim), np.float32)
        rows = np.cumsum(todo) - 1
        return [
            AnalyzedFace(
                box=det.boxes[i].copy(),
                keypoints=det.keypoints[i].copy(),
                score=float(det.scores[i]),
                quality=quals[i],
                chip=chips[i].copy(),
                matrix=mats[i].copy(),
                embedding=emb[rows[i]].copy() if todo[i] else None,
            )
            for i in range(len(det))
        ]

    def primary(self, rgb: U8) -> AnalyzedFace | None:
        """The largest / most central face, or None when there is none."""
        faces = self.analyze(rgb)
        if not faces:
            return None
        boxes = np.stack([f.box for f in faces])
        return faces[primary_index(boxes, int(rgb.shape[1]), int(rgb.shape[0]))]
