"""Golden outputs: each manifest model runs a committed input and must give its recorded output.

A sha256 proves the file is the one built; it does not prove this runtime computes with it. A
wrong CPU model under emulation, a broken kernel or a miscompiled delegate gives garbage from
a good file (seen under qemu: 0 faces instead of 50, while shapes were fine). So every entry
carries a `golden` block: a small input under the models folder's golden/ (made from
scikit-image's public-domain `astronaut`, never from LFW) and the output recorded at build or
import time. The inputs are already at the model's input size, so no resize runs before the
model: resizes are the one stage known to differ in bytes between x86 and arm64.

Tolerances (stated here, repeated in each entry):
* embedders: cosine of the L2-normalised descriptor to the recorded one >= MIN_COSINE;
* detectors: the same number of faces; each recorded face matched with box IoU >= MIN_IOU,
  score within MAX_SCORE_DIFF, every keypoint within MAX_KEYPOINT_ERR box widths;
* face mesh (role "landmarks"): mean landmark distance <= MAX_MESH_ERR of the crop's side.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import InputError
from edge.core.imageio import decode_rgb
from edge.core.inference import ModelEntry, TFLiteModel, sha256_file
from edge.core.types import F32, U8

GOLDEN_DIR = "golden"
MIN_COSINE = 0.995
MIN_IOU = 0.9
MAX_SCORE_DIFF = 0.05
MAX_KEYPOINT_ERR = 0.05
MAX_MESH_ERR = 0.01


@dataclass(frozen=True, slots=True)
class GoldenResult:
    ok: bool
    figure: str  # the compared figure, e.g. "cosine 0.99998 (>= 0.995)"


def encode_vector(v: F32) -> str:
    """float32 little-endian bytes, base64: exact and one line in the manifest."""
    return base64.b64encode(np.asarray(v, "<f4").tobytes()).decode("ascii")


def decode_vector(s: str, where: str) -> F32:
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise InputError(f"{where}: not base64") from None
    if len(raw) % 4:
        raise InputError(f"{where}: {len(raw)} bytes is not a float32 vector")
    out: F32 = np.frombuffer(raw, "<f4").astype(np.float32)
    return out


def golden_input(models_dir: Path, rel: str, sha256: str | None, where: str) -> U8:
    path = models_dir / rel
    if not path.exists():
        raise InputError(f"{path}: golden input missing ({where})")
    if sha256 is not None and sha256_file(path) != sha256:
        raise InputError(f"{path}: golden input sha256 does not match {where}")
    img = decode_rgb(path)
    if img is None:
        raise InputError(f"{path}: golden input cannot be decoded ({where})")
    return img


def _detector(model: TFLiteModel) -> Any:
    from edge.core.config import DetectionConfig
    from edge.core.vision.detect import FaceDetector

    return FaceDetector.from_settings(model, DetectionConfig(), whole_frame_only=True, min_face=False)


def embedder_output(model: TFLiteModel, chip: U8) -> F32:
    from edge.core.vision.embed import Embedder

    emb = Embedder(model)
    if chip.shape[:2] != (emb.chip_size, emb.chip_size):
        raise InputError(f"{model.id}: golden chip {chip.shape[:2]} is not the model's {emb.chip_size}px chip")
    out: F32 = emb.embed(chip)[0]
    return out


def detector_output(model: TFLiteModel, image: U8) -> list[dict[str, Any]]:
    det = _detector(model).detect(image)
    return [
        {
            "box": [round(float(v), 3) for v in det.boxes[i]],
            "score": round(float(det.scores[i]), 5),
            "keypoints": [[round(float(x), 3), round(float(y), 3)] for x, y in det.keypoints[i]],
        }
        for i in range(len(det))
    ]


def mesh_output(model: TFLiteModel, crop: U8) -> F32:
    """(468, 2) landmarks in the crop's pixels; the crop is already the mesh's input."""
    from edge.core.vision.landmarks import MeshLandmarker

    identity = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], np.float32)
    out: F32 = MeshLandmarker(model).landmarks(crop, identity)[0]
    return out


def record(model: TFLiteModel, entry_role: str, models_dir: Path, rel_input: str) -> dict[str, Any]:
    """The `golden` block for a model: its output on the committed input, with the tolerances."""
    img = golden_input(models_dir, rel_input, None, rel_input)
    block: dict[str, Any] = {"input": rel_input, "input_sha256": sha256_file(models_dir / rel_input)}
    if entry_role == "embedder":
        block["embedding_f32_b64"] = encode_vector(embedder_output(model, img))
        block["min_cosine"] = MIN_COSINE
    elif entry_role == "detector":
        faces = detector_output(model, img)
        if not faces:
            raise InputError(f"{model.id}: no face found in the golden input {rel_input}: a useless golden output")
        block["faces"] = faces
        block.update(min_iou=MIN_IOU, max_score_diff=MAX_SCORE_DIFF, max_keypoint_err_box_widths=MAX_KEYPOINT_ERR)
    elif entry_role == "landmarks":
        block["landmarks_f32_b64"] = encode_vector(mesh_output(model, img).reshape(-1))
        block["max_mean_err_crop_fraction"] = MAX_MESH_ERR
    else:
        raise InputError(f"{model.id}: no golden check for role {entry_role!r}")
    return block


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def check(model: TFLiteModel, entry: ModelEntry, models_dir: Path) -> GoldenResult:
    """Run the entry's golden input and compare with its recorded output (see the module doc)."""
    g = entry.raw.get("golden")
    where = f"MANIFEST.json {entry.id}.golden"
    if not isinstance(g, dict) or "input" not in g:
        return GoldenResult(False, "no golden output recorded: values cannot be checked")
    img = golden_input(models_dir, str(g["input"]), g.get("input_sha256"), where)
    if entry.role == "embedder":
        want = decode_vector(str(g.get("embedding_f32_b64", "")), f"{where}.embedding_f32_b64")
        got = embedder_output(model, img)
        if want.shape != got.shape:
            return GoldenResult(False, f"descriptor has {got.size} values, the recorded one {want.size}")
        bound = float(g.get("min_cosine", MIN_COSINE))
        den = float(np.linalg.norm(want) * np.linalg.norm(got))
        cos = float(np.dot(want, got) / den) if den > 0 and np.isfinite(got).all() else float("nan")
        ok = bool(cos >= bound)
        return GoldenResult(ok, f"golden cosine {cos:.5f} ({'>=' if ok else 'below'} {bound})")
    if entry.role == "detector":
        rec = list(g.get("faces", []))
        got_faces = detector_output(model, img)
        if len(got_faces) != len(rec):
            return GoldenResult(False, f"golden input: {len(got_faces)} faces found, {len(rec)} recorded")
        min_iou = float(g.get("min_iou", MIN_IOU))
        max_ds = float(g.get("max_score_diff", MAX_SCORE_DIFF))
        max_kp = float(g.get("max_keypoint_err_box_widths", MAX_KEYPOINT_ERR))
        worst_iou, worst_ds, worst_kp = 1.0, 0.0, 0.0
        for r in rec:
            best = max(got_faces, key=lambda f: _iou(f["box"], r["box"]))
            worst_iou = min(worst_iou, _iou(best["box"], r["box"]))
            worst_ds = max(worst_ds, abs(best["score"] - float(r["score"])))
            width = max(float(r["box"][2]) - float(r["box"][0]), 1e-6)
            err = np.abs(np.asarray(best["keypoints"]) - np.asarray(r["keypoints"], np.float64)).max() / width
            worst_kp = max(worst_kp, float(err))
        ok = worst_iou >= min_iou and worst_ds <= max_ds and worst_kp <= max_kp
        figure = (f"golden IoU {worst_iou:.3f} (>= {min_iou}), score diff {worst_ds:.4f} (<= {max_ds}), "
                  f"keypoint error {worst_kp:.4f} box widths (<= {max_kp})")  # fmt: skip
        return GoldenResult(ok, figure)
    if entry.role == "landmarks":
        want = decode_vector(str(g.get("landmarks_f32_b64", "")), f"{where}.landmarks_f32_b64").reshape(-1, 2)
        got = mesh_output(model, img)
        if want.shape != got.shape:
            return GoldenResult(False, f"{got.shape[0]} landmarks, {want.shape[0]} recorded")
        bound = float(g.get("max_mean_err_crop_fraction", MAX_MESH_ERR))
        err = float(np.linalg.norm(got - want, axis=1).mean()) / float(img.shape[1])
        ok = bool(err <= bound)
        return GoldenResult(ok, f"golden landmark error {err:.4f} of the crop ({'<=' if ok else 'above'} {bound})")
    return GoldenResult(False, f"no golden check for role {entry.role!r}")
