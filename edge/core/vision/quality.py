"""Quality gate, applied before any embedding is computed: is this face worth judging?

Four measures, vectorised over all faces of a frame:
- inter-ocular distance in frame px (eye keypoints): below ~12 px the chip is upsampled mush;
- sharpness: variance of the Laplacian of the grey chip's central face region (motion/focus blur);
- pose: roll is the eye line's angle; yaw comes from where the nose tip sits between the eyes and
  between the ear tragions (in the roll-corrected frame), through a simple head model (below);
- the detector's score.
A face is rejected with the first failing reason in the order small, pose, low_score, blurry
(keypoint checks before the chip-based one); every rejection is counted per reason.

Yaw model: a head turned by θ moves the nose tip sideways by depth·sin θ while the eyes/ears
spread shrinks by cos θ, so both offsets are proportional to tan θ. Nose-tip depth in front of the
eye centres ≈ 0.5 inter-ocular distances and tragion depth behind the nose ≈ 1.2 half
bitragion-breadths (anthropometric, rounded); on 298 LFW faces the two BlazeFace-based ratios
agree with a correlation of 0.997 and a slope of 2.43 (1.21 / 0.5), so the constants below
make the two estimates agree and the gate averages them.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from edge.core.config import QualityConfig
from edge.core.errors import InputError
from edge.core.types import (
    F32,
    KP_LEFT_EAR,
    KP_LEFT_EYE,
    KP_NOSE,
    KP_RIGHT_EAR,
    KP_RIGHT_EYE,
    U8,
    Quality,
    Rejection,
)

NOSE_DEPTH_PER_IOD = 0.5
TRAGION_DEPTH_PER_HALF_BREADTH = 1.21
# The chip's border is background and hair; blur is judged on the face itself.
FACE_REGION = (slice(30, 135), slice(30, 120))  # rows, cols of the 150x150 chip
# Keypoint checks first, blur last: a turned head's chip is half background, so its sharpness says
# nothing about focus.
_ORDER = (Rejection.SMALL, Rejection.POSE, Rejection.LOW_SCORE, Rejection.BLURRY)


def pose_angles(keypoints: F32) -> tuple[F32, F32, F32]:
    """(N, 6, 2) keypoints → inter-ocular px, yaw degrees (+ = subject turned to their left), roll degrees."""
    k = np.asarray(keypoints, np.float64)
    eye_vec = k[:, KP_LEFT_EYE] - k[:, KP_RIGHT_EYE]
    iod = np.hypot(eye_vec[:, 0], eye_vec[:, 1])
    u = eye_vec / np.maximum(iod, 1e-9)[:, None]
    roll = np.degrees(np.arctan2(eye_vec[:, 1], eye_vec[:, 0]))
    mid = 0.5 * (k[:, KP_LEFT_EYE] + k[:, KP_RIGHT_EYE])
    nose = k[:, KP_NOSE]
    t_eye = np.einsum("nc,nc->n", nose - mid, u) / np.maximum(iod, 1e-9) / NOSE_DEPTH_PER_IOD
    a = np.einsum("nc,nc->n", nose - k[:, KP_RIGHT_EAR], u)
    b = np.einsum("nc,nc->n", k[:, KP_LEFT_EAR] - nose, u)
    t_ear = (a - b) / np.maximum(np.abs(a + b), 1e-9) / TRAGION_DEPTH_PER_HALF_BREADTH
    yaw = np.degrees(np.arctan(0.5 * (t_eye + t_ear)))
    return iod.astype(np.float32), yaw.astype(np.float32), roll.astype(np.float32)


def sharpness(regions: U8) -> F32:
    """Variance of the Laplacian of each grey face region → (N,).

    `regions` are (N, h, w, 3) uint8 face regions as VisionStack.gate_regions cuts them
    (FACE_REGION of the gate's reference chip, whatever the embedder's template).
    """
    if regions.ndim != 4 or regions.shape[3] != 3:
        raise InputError(f"face regions must be (N, H, W, 3), got {regions.shape}")
    n = regions.shape[0]
    if n == 0:
        return np.zeros((0,), np.float32)
    roi = regions
    h, w = roi.shape[1], roi.shape[2]
    # OpenCV's float RGB→grey uses the same BT.601 weights, in one pass instead of a matmul.
    grey = cv2.cvtColor(roi.astype(np.float32).reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY)
    # One Laplacian over the stacked faces; each face's first and last rows see its neighbour
    # through the 3x3 kernel, so they are dropped from its variance.
    lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=1).reshape(n, h, w)[:, 1:-1, 1:-1]
    # OpenCV reads each face's strided view in place (numpy's var would copy it first) and sums
    # in double.
    sd = np.array([cv2.meanStdDev(lap[i])[1][0, 0] for i in range(n)], np.float64)
    var: F32 = (sd * sd).astype(np.float32)
    return var


class QualityGate:
    """Thresholds from QualityConfig; `assess` returns one Quality per face, in input order."""

    def __init__(self, cfg: QualityConfig | None = None) -> None:
        self.cfg = cfg or QualityConfig()

    def assess(self, keypoints: F32, scores: F32, regions: U8) -> list[Quality]:
        """One Quality per face; `regions` are the faces' VisionStack.gate_regions."""
        n = int(np.asarray(scores).shape[0])
        if keypoints.shape[0] != n or regions.shape[0] != n:
            raise InputError(f"quality: {keypoints.shape[0]} keypoints, {n} scores, {regions.shape[0]} face regions")
        iod, yaw, roll = pose_angles(keypoints)
        sharp = sharpness(regions)
        sc = np.asarray(scores, np.float32)
        c = self.cfg
        failing = np.stack(
            [
                iod < c.min_interocular_px,
                (np.abs(yaw) > c.max_yaw_deg) | (np.abs(roll) > c.max_roll_deg),
                sc < c.min_det_score,
                sharp < c.min_sharpness,
            ],
            axis=1,
        )
        any_fail: list[bool] = np.asarray(failing.any(axis=1)).tolist()
        first: list[int] = failing.argmax(axis=1).tolist()
        return [
            Quality(
                interocular_px=i_,
                sharpness=sh,
                yaw_deg=y_,
                roll_deg=r_,
                det_score=s_,
                rejection=_ORDER[f_] if bad else None,
            )
            for i_, sh, y_, r_, s_, f_, bad in zip(
                iod.tolist(), sharp.tolist(), yaw.tolist(), roll.tolist(), sc.tolist(), first, any_fail, strict=True
            )
        ]


def count_rejections(qualities: Iterable[Quality], into: dict[str, int] | None = None) -> dict[str, int]:
    """Add each rejected face to its reason's count (Counters.rejections has the same keys)."""
    counts = into if into is not None else {r.value: 0 for r in Rejection}
    for q in qualities:
        if q.rejection is not None:
            counts[q.rejection.value] = counts.get(q.rejection.value, 0) + 1
    return counts
