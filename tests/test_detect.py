"""BlazeFace detector: decoding, tiling for small faces, int8 variant, empty images."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.core.inference import default_models_dir, load_manifest, load_model
from edge.core.types import KP_LEFT_EYE, KP_RIGHT_EYE, Detections
from edge.core.vision.detect import (
    DEFAULT_TILES,
    FULL_RANGE,
    SHORT_RANGE,
    FaceDetector,
    decode,
    ssd_anchor_centres,
    tile_grid,
    weighted_nms,
)

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) provides astronaut()")

MODELS = default_models_dir()

# Eye centres in skimage.data.astronaut() (512x512, public domain, NASA), as x, y pixels.
# Obtained once by inspection: the two eye regions were cropped, enlarged 16x with a 1 px grid
# and the iris/pupil centre read off the grid (image-left eye spans x 200-206, y 98-104; the
# image-right eye x 245-250, y 98-104). Reading error is about ±1 px, against a tolerance of
# 10 % of the 43.5 px inter-ocular distance (4.35 px).
ASTRONAUT_RIGHT_EYE = (203.5, 101.0)  # subject's right eye, on the image's left (MediaPipe order)
ASTRONAUT_LEFT_EYE = (247.0, 101.5)


def _detector(
    model_id: str, cols: int = DEFAULT_TILES[0], rows: int = DEFAULT_TILES[1], overlap: float = DEFAULT_TILES[2]
) -> FaceDetector:
    assert model_id in load_manifest(MODELS), f"{model_id} is shipped in {MODELS}/MANIFEST.json"
    return FaceDetector(load_model(model_id, MODELS, num_threads=2), tiles=(cols, rows, overlap))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(skimage_data.astronaut())


def _eye_errors(det: Detections) -> tuple[float, float]:
    gt_r, gt_l = np.array(ASTRONAUT_RIGHT_EYE), np.array(ASTRONAUT_LEFT_EYE)
    iod = float(np.linalg.norm(gt_l - gt_r))
    kp = det.keypoints[0]
    return (
        float(np.linalg.norm(kp[KP_RIGHT_EYE] - gt_r)) / iod,
        float(np.linalg.norm(kp[KP_LEFT_EYE] - gt_l)) / iod,
    )


def test_anchor_layouts_match_mediapipe() -> None:
    full = ssd_anchor_centres(FULL_RANGE)
    short = ssd_anchor_centres(SHORT_RANGE)
    assert full.shape == (2304, 2) and short.shape == (896, 2)
    # Full range: one anchor per cell of a 48x48 grid, row-major, centred in the cell.
    assert np.allclose(full[0], [0.5 / 48, 0.5 / 48]) and np.allclose(full[1], [1.5 / 48, 0.5 / 48])
    # Short range: 16x16 cells x 2 anchors, then 8x8 cells x 6 (three stride-16 layers, 2 each).
    assert np.allclose(short[0], short[1]) and not np.allclose(short[1], short[2])
    assert np.allclose(short[512], [0.5 / 8, 0.5 / 8]) and np.allclose(short[517], short[512])
    assert np.allclose(short[518], [1.5 / 8, 0.5 / 8])


def test_decode_and_weighted_nms_synthetic() -> None:
    anchors = ssd_anchor_centres(SHORT_RANGE)
    raw = np.zeros((1, 896, 16), np.float32)
    logits = np.full((1, 896, 1), -20.0, np.float32)
    raw[0, 600, 2:4] = 32.0  # 32 px box on the 128 input around anchor 600
    raw[0, 601, 2:4] = 32.0
    raw[0, 601, 0] = 2.0  # shifted 2 px: same face, blended by weighted NMS
    logits[0, 600, 0], logits[0, 601, 0] = 3.0, 1.0
    b, k, s, bi = decode(raw, logits, anchors, 128, 0.5)
    assert b.shape == (2, 4) and k.shape == (2, 6, 2) and set(bi.tolist()) == {0}
    assert np.allclose(b[0, 2] - b[0, 0], 0.25)
    mb, _, ms = weighted_nms(b, k, s, 0.3)
    assert mb.shape == (1, 4) and ms[0] == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-5)
    w0, w1 = s[0], s[1]
    expected_cx = (w0 * 0.0 + w1 * 2.0) / (w0 + w1) / 128 + anchors[600, 0]
    assert (mb[0, 0] + mb[0, 2]) / 2 == pytest.approx(expected_cx, abs=1e-6)



def test_weighted_nms_groups_keep_views_apart() -> None:
    # The detector merges every view's anchors in one call, grouped by view: two views of one
    # face must stay two votes (the cross-view merge weighs them), and a zero-area box must not
    # stall the loop.
    boxes = np.array([[10, 10, 50, 50], [11, 10, 51, 50], [10, 10, 50, 50], [80, 80, 80, 80]], np.float32)
    kps = np.zeros((4, 6, 2), np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    groups = np.array([0, 0, 1, 1], np.intp)
    mb, _, ms = weighted_nms(boxes, kps, scores, 0.3, groups=groups)
    assert ms.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert mb[0, 0] == pytest.approx((0.9 * 10 + 0.8 * 11) / 1.7)
    one, _, _ = weighted_nms(boxes, kps, scores, 0.3)
    assert one.shape[0] == 2  # without groups the three overlapping boxes are one face

def test_tile_grid_covers_frame_with_overlap() -> None:
    tiles = tile_grid(1920, 1080, 4, 2, 0.25)
    assert len(tiles) == 8
    xs = sorted({t[0] for t in tiles})
    side = tiles[0][2] - tiles[0][0]
    assert tiles[0][:2] == (0, 0) and max(t[2] for t in tiles) == 1920 and max(t[3] for t in tiles) == 1080
    assert all(b - a <= side * 0.75 + 1 for a, b in itertools.pairwise(xs))


def test_astronaut_face_and_eyes(astronaut: np.ndarray) -> None:
    det = _detector("blazeface_full_range_fp32").detect(astronaut)
    assert len(det) == 1, det.boxes
    x0, y0, x1, y1 = det.boxes[0]
    assert x0 < ASTRONAUT_RIGHT_EYE[0] < ASTRONAUT_LEFT_EYE[0] < x1 and y0 < ASTRONAUT_RIGHT_EYE[1] < y1
    er, el = _eye_errors(det)
    assert er < 0.10 and el < 0.10, (er, el, det.keypoints[0, :2])


def test_astronaut_int8(astronaut: np.ndarray) -> None:
    det = _detector("blazeface_full_range_int8").detect(astronaut)
    assert len(det) >= 1
    er, el = _eye_errors(det)
    # int8 outputs are quantised to ~1 input px (about 2.7 frame px here): looser than fp32.
    assert er < 0.20 and el < 0.20, (er, el, det.keypoints[0, :2])


def test_empty_image_yields_nothing() -> None:
    det = _detector("blazeface_full_range_fp32")
    for value in (0, 128, 255):
        assert len(det.detect(np.full((720, 1280, 3), value, np.uint8))) == 0


def _small_face_frame(astronaut: np.ndarray, face_px: int) -> tuple[np.ndarray, tuple[float, float]]:
    """The astronaut's head scaled so the face box is ~face_px wide, pasted into a 1080p frame."""
    # The detector's face box on the 512 px image is ~105 px wide; crop a margin around it.
    crop = astronaut[40:220, 140:320]
    scale = face_px / 105.0
    small = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    frame = np.clip(rng.normal(110, 25, (1080, 1920, 3)), 0, 255).astype(np.uint8)
    frame = np.asarray(cv2.GaussianBlur(frame, (0, 0), 3), dtype=np.uint8)
    x, y = 1300, 700
    frame[y : y + small.shape[0], x : x + small.shape[1]] = small
    centre = (x + (227 - 140) * scale, y + (125 - 40) * scale)  # face centre in the frame
    return frame, centre


def test_tiling_finds_48px_face_that_whole_frame_misses(astronaut: np.ndarray) -> None:
    frame, (cx, cy) = _small_face_frame(astronaut, 48)
    whole = _detector("blazeface_full_range_fp32", cols=1, rows=1, overlap=0.0)
    tiled = _detector("blazeface_full_range_fp32")  # defaults: whole frame + tiles

    def hit(det: Detections) -> bool:
        b = det.boxes
        inside = (b[:, 0] <= cx) & (cx <= b[:, 2]) & (b[:, 1] <= cy) & (cy <= b[:, 3])
        return bool(inside.any())

    assert not hit(whole.detect(frame)), "whole-frame pass alone should be too coarse for a 48 px face"
    det = tiled.detect(frame)
    assert hit(det), det.boxes
    i = int(np.argmax(det.scores))
    assert 30 <= det.boxes[i, 2] - det.boxes[i, 0] <= 70


def test_multi_face_photos(faces_dir: Path) -> None:
    det = _detector("blazeface_full_range_fp32")
    d = faces_dir / "small" / "multi_face"
    counts = {}
    for name in ("face_recognition_two_people.jpg", "facenet_pytorch_multiface.jpg", "dlib_bald_guys.jpg"):
        bgr = cv2.imread(str(d / name))
        assert bgr is not None, name
        counts[name] = len(det.detect(np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))))
    # two_people: exactly its two faces; multiface: the six Friends; bald_guys: a 25-face
    # collage of small portraits (24 found with tiles, 19 by the whole-frame pass alone).
    assert counts["face_recognition_two_people.jpg"] == 2, counts
    assert counts["facenet_pytorch_multiface.jpg"] >= 5, counts
    assert counts["dlib_bald_guys.jpg"] >= 21, counts


@pytest.mark.parametrize(("size", "tiles"), [((720, 1280), (3, 2, 0.25)), ((1080, 1920), (5, 3, 0.25))])
def test_shared_tile_resize_feeds_the_model_the_same_bytes(size: tuple[int, int], tiles: tuple[int, int, float]) -> None:
    # The default grids shrink their overlapping tiles in one resize; the model (and the int8
    # calibration, which reads prepare()) must see exactly what tile-by-tile resizing gives.
    cols, rows, overlap = tiles
    det = _detector("blazeface_full_range_int8", cols=cols, rows=rows, overlap=overlap)
    rng = np.random.default_rng(3)
    frame = np.asarray(cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (0, 0), 1.5))
    shared = det.prepare(frame).copy()
    assert sum(len(g.members) for g in det._shared) == cols * rows, "default grid should share its resize"
    det._own, det._shared = list(range(len(det._views))), []  # every view on its own, as before
    assert np.array_equal(det.prepare(frame), shared)


def test_post_processing_is_order_and_grouping_safe() -> None:
    # Weighted NMS labels clusters on packed bit rows: more than 64 detections (several
    # machine words per row) must still cluster like the plain definition says.
    rng = np.random.default_rng(0)
    centres = rng.uniform(100, 900, (30, 2)).astype(np.float32)
    boxes = np.concatenate([np.repeat(centres, 3, 0) - 20, np.repeat(centres, 3, 0) + 20], axis=1)
    boxes += rng.normal(0, 1.5, boxes.shape).astype(np.float32)
    scores = rng.uniform(0.5, 1.0, boxes.shape[0]).astype(np.float32)
    kps = np.zeros((boxes.shape[0], 6, 2), np.float32)
    mb, _, ms = weighted_nms(boxes, kps, scores, 0.3)
    # Reference: the greedy definition, one cluster at a time.
    order = np.argsort(-scores, kind="stable")
    free = np.ones(len(order), bool)
    expected = []
    for k in range(len(order)):
        if not free[k]:
            continue
        ious = np.array([_iou(boxes[order[k]], boxes[order[j]]) for j in range(len(order))])
        members = free & (ious > 0.3)
        members[k] = True
        free &= ~members
        w = scores[order][members]
        expected.append((w[:, None] * boxes[order][members]).sum(0) / w.sum())
    assert ms.shape[0] == len(expected) and np.all(np.diff(ms) <= 0)
    assert np.allclose(mb, np.array(expected), atol=1e-3)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
