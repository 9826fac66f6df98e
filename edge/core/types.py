"""Typed records that flow one way through the appliance.

frame → detections → face chips (+quality) → tracks → embeddings → matches → alerts.

Images are RGB uint8 HxWx3 everywhere inside the pipeline: sources convert once at the
edge (OpenCV's BGR, picamera2's XRGB) so no stage has to guess the channel order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]

# MediaPipe BlazeFace keypoint order (subject's right eye appears on the image's left).
KP_RIGHT_EYE, KP_LEFT_EYE, KP_NOSE, KP_MOUTH, KP_RIGHT_EAR, KP_LEFT_EAR = range(6)


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured image. `seq` increases by one per frame the source produced (gaps = drops)."""

    seq: int
    t_mono: float  # time.monotonic() at capture, for latency and pacing
    t_wall: float  # time.time() at capture, for alert timestamps
    image: U8  # HxWx3 RGB, C-contiguous


@dataclass(frozen=True, slots=True)
class Detections:
    """All faces found in one frame, as parallel arrays (vectorised downstream, no per-face objects)."""

    boxes: F32  # (N, 4) x0, y0, x1, y1 in frame pixels
    keypoints: F32  # (N, 6, 2) x, y in frame pixels, MediaPipe order (KP_*)
    scores: F32  # (N,)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros((0, 6, 2), np.float32), np.zeros((0,), np.float32)
        )


class Rejection(str, enum.Enum):
    """Why the quality gate refused a face; counted per reason in the status."""

    SMALL = "small"  # inter-ocular distance below the gate
    BLURRY = "blurry"  # variance of the Laplacian on the chip below the gate
    POSE = "pose"  # yaw or roll beyond the gate
    LOW_SCORE = "low_score"  # detector score below the gate


@dataclass(frozen=True, slots=True)
class Quality:
    interocular_px: float
    sharpness: float
    yaw_deg: float
    roll_deg: float
    det_score: float
    rejection: Rejection | None  # None = accepted

    @property
    def accepted(self) -> bool:
        return self.rejection is None

    @property
    def rank(self) -> float:
        """Single figure used to keep a track's best views: bigger, sharper, more frontal is better."""
        frontal = max(0.0, 1.0 - abs(self.yaw_deg) / 90.0)
        return float(self.interocular_px * frontal * min(self.sharpness, 500.0) ** 0.5 * self.det_score)


@dataclass(frozen=True, slots=True)
class Subject:
    subject_id: str
    category: str = "wanted"
    priority: int = 1
    threshold: float | None = None  # per-subject/category override of the matching threshold


@dataclass(frozen=True, slots=True)
class Match:
    subject: Subject
    score: float  # cosine similarity of the fused probe with the subject's best template
    margin: float  # top-1 minus top-2 subject score (1.0 when the list has one subject)
    threshold: float  # the threshold that was applied


@dataclass(frozen=True, slots=True)
class MatchEvent:
    """What the loop hands to the alert publisher: one per (track, subject)."""

    match: Match
    track_id: int
    frame_seq: int
    t_wall: float
    camera: str
    bbox: tuple[float, float, float, float]
    frames_fused: int
    watchlist_version: int
    crop_jpeg: bytes | None = None  # probe chip for human adjudication; only ever for a match


@dataclass(slots=True)
class Counters:
    """Counts only: the appliance keeps no data about people who do not match."""

    frames: int = 0
    frames_dropped: int = 0
    faces_seen: int = 0
    embeddings: int = 0
    rejections: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in Rejection})
    matches: int = 0
    non_match_discarded: int = 0
    source_reconnects: int = 0

    def __add__(self, other: Counters) -> Counters:
        """Both counts together (several cameras' loops); every field, so a new one cannot be missed."""
        out = Counters()
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(out, f.name, {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}} if isinstance(a, dict) else a + b)
        return out
