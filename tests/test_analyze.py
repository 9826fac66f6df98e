"""FaceAnalyzer (enrolment, eval, demo): real photos in, one judged and embedded face per person out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.core.config import Config, parse_config
from edge.core.errors import InputError
from edge.core.imageio import read_rgb
from edge.core.vision.analyze import FaceAnalyzer, primary_index


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer.from_config(Config())


def test_same_person_scores_higher_than_someone_else(faces_dir: Path, analyzer: FaceAnalyzer) -> None:
    lfw = faces_dir / "lfw"
    a1 = analyzer.primary(read_rgb(lfw / "Colin_Powell/Colin_Powell_0001.jpg"))
    a2 = analyzer.primary(read_rgb(lfw / "Colin_Powell/Colin_Powell_0002.jpg"))
    b = analyzer.primary(read_rgb(lfw / "Tony_Blair/Tony_Blair_0001.jpg"))
    for f in (a1, a2, b):
        assert f is not None and f.quality.accepted and f.embedding is not None
        assert f.embedding.shape == (128,) and abs(float(np.linalg.norm(f.embedding)) - 1.0) < 1e-4
        assert f.chip.shape == (150, 150, 3) and f.keypoints.shape == (6, 2)
    assert a1 is not None and a2 is not None and b is not None
    assert a1.embedding is not None and a2.embedding is not None and b.embedding is not None
    same = float(a1.embedding @ a2.embedding)
    other = float(a1.embedding @ b.embedding)
    assert same > other + 0.03, (same, other)
    # Chips are owned copies: analysing another image must not change an earlier result.
    assert not np.array_equal(a1.chip, b.chip)


def test_chips_are_placed_by_the_face_mesh_in_enrolment_and_in_the_camera_alike(faces_dir: Path) -> None:
    """The shipped recipe names the face mesh: a custody photo and a camera face are cut the same
    way, the way the cohort and the thresholds were measured; the gate keeps the keypoint fit."""
    from edge.core.vision.stack import StackUse, build_vision_stack

    stills = build_vision_stack(Config(), StackUse.STILLS)
    camera = build_vision_stack(Config(), StackUse.CAMERA)
    assert stills.model_ids.landmarks == camera.model_ids.landmarks == "face_mesh_fp32"
    assert stills.mesh is not None and camera.mesh is not None
    img = read_rgb(faces_dir / "lfw" / "Colin_Powell/Colin_Powell_0001.jpg")
    face = FaceAnalyzer(stills).primary(img)
    assert face is not None
    kps = face.keypoints[None]
    fit = camera.aligner.matrices(kps)
    camera_chip = camera.aligner.align_with(img, camera.chip_matrices(img, kps, fit))[0]
    assert np.array_equal(face.chip, camera_chip)
    assert np.array_equal(face.chip, stills.mesh.align(img, kps)[0][0])
    keypoint_chip = stills.aligner.align(img, kps)[0][0]
    assert not np.array_equal(face.chip, keypoint_chip)
    # The mesh moves the chip by a few pixels, not to another place: its centre, in the frame,
    # stays within a tenth of the face's width of the keypoint fit's.
    from edge.core.vision.align import invert_affine

    centres = invert_affine(np.stack([face.matrix, fit[0]])) @ np.array([75.0, 75.0, 1.0], np.float32)
    assert float(np.linalg.norm(centres[0] - centres[1])) < 0.1 * float(face.box[2] - face.box[0])


def test_several_faces_and_the_primary_one(faces_dir: Path) -> None:
    cfg = Config()
    analyzer = FaceAnalyzer.from_config(cfg)  # a group photo, judged as stills are: one whole-frame pass
    img = read_rgb(faces_dir / "small" / "multi_face" / "face_recognition_two_people.jpg")
    faces = analyzer.analyze(img)
    assert len(faces) >= 2
    primary = analyzer.primary(img)
    assert primary is not None
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
    # The primary face is one of the two largest (both people are in the middle of the photo).
    assert (primary.box[2] - primary.box[0]) * (primary.box[3] - primary.box[1]) >= sorted(areas)[-2]


def test_rejected_faces_are_not_embedded(faces_dir: Path) -> None:
    strict = parse_config({"quality": {"min_interocular_px": 500}}, Path("."))
    analyzer = FaceAnalyzer.from_config(strict)
    face = analyzer.primary(read_rgb(faces_dir / "lfw" / "Colin_Powell/Colin_Powell_0001.jpg"))
    assert face is not None and face.quality.rejection is not None
    assert face.quality.rejection.value == "small" and face.embedding is None


def test_primary_index_prefers_large_and_central() -> None:
    boxes = np.array(
        [[0, 0, 60, 60], [200, 150, 300, 250], [520, 380, 640, 480]], np.float32
    )  # corner small, centre medium, corner larger
    assert primary_index(boxes, 640, 480) == 1
    with pytest.raises(InputError):
        primary_index(np.zeros((0, 4), np.float32), 640, 480)
