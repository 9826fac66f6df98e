"""Golden inputs and outputs for `lfr-edge models verify` (see edge/core/golden.py for the check).

    python models/golden_inputs.py            # (re)record every manifest entry's golden output
    python models/golden_inputs.py --inputs   # also remake the committed golden/ images

Inputs come from scikit-image's `astronaut` (Eileen Collins, NASA, public domain), which the
demo already uses; never from LFW. Each is made at the model's own input size, once, and
committed, so verify runs no resize before the model:
* detectors: a square around the face, shrunk to the input size (INTER_AREA), golden/astronaut_<S>.png;
* embedders: the face aligned by the shipped full-range detector and Aligner.for_template(),
  golden/astronaut_<template>_<S>.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge.core import golden  # noqa: E402
from edge.core.errors import InputError  # noqa: E402
from edge.core.inference import TFLiteModel, load_manifest, load_model  # noqa: E402
from edge.core.types import U8  # noqa: E402
from edge.core.vision.align import Aligner, ChipTemplate  # noqa: E402

SHIPPED = ROOT / "models"
DETECTOR_FOR_CHIPS = "blazeface_full_range_fp32"
# Head and shoulders of the astronaut in the 512x512 image (x0, y0, side): the face fills about half.
FACE_SQUARE = (110, 0, 230)


def astronaut() -> U8:
    from skimage import data

    img: U8 = np.ascontiguousarray(data.astronaut()[:, :, :3])  # type: ignore[no-untyped-call]
    return img


def detector_input_name(size: int) -> str:
    return f"{golden.GOLDEN_DIR}/astronaut_{size}.png"


def chip_name(template: ChipTemplate, size: int) -> str:
    return f"{golden.GOLDEN_DIR}/astronaut_{template.value}_{size}.png"


def _write_png(path: Path, rgb: U8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"cannot encode {path}")
    path.write_bytes(buf.tobytes())


def make_detector_input(size: int) -> U8:
    x0, y0, side = FACE_SQUARE
    crop = astronaut()[y0 : y0 + side, x0 : x0 + side]
    out: U8 = np.asarray(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA), np.uint8)
    return out


def make_chip(template: ChipTemplate, size: int) -> U8:
    from edge.core.config import DetectionConfig
    from edge.core.vision.detect import FaceDetector

    img = astronaut()
    det = FaceDetector.from_settings(
        load_model(DETECTOR_FOR_CHIPS, SHIPPED, num_threads=2), DetectionConfig(), whole_frame_only=True, min_face=False
    ).detect(img)
    if len(det) != 1:
        raise RuntimeError(f"expected the astronaut's one face, found {len(det)}")
    chips, _ = Aligner.for_template(template, size).align(img, det.keypoints)
    out: U8 = chips[0].copy()
    return out


def mesh_crop_name() -> str:
    return f"{golden.GOLDEN_DIR}/astronaut_mesh_192.png"


def make_mesh_crop() -> U8:
    """The astronaut's face framed as the face mesh wants it (MeshAligner's crop), 192x192."""
    import cv2 as _cv2

    from edge.core.config import DetectionConfig
    from edge.core.vision.detect import FaceDetector
    from edge.core.vision.landmarks import MESH_INPUT, MeshAligner

    img = astronaut()
    det = FaceDetector.from_settings(
        load_model(DETECTOR_FOR_CHIPS, SHIPPED, num_threads=2), DetectionConfig(), whole_frame_only=True, min_face=False
    ).detect(img)
    geometry = MeshAligner(None)  # type: ignore[arg-type]  # its crop geometry only; no landmark model needed
    crop = _cv2.warpAffine(img, geometry.crop_matrices(det.keypoints)[0], (MESH_INPUT, MESH_INPUT),
                           flags=_cv2.INTER_LINEAR)  # fmt: skip
    out: U8 = np.asarray(crop, np.uint8)
    return out


def ensure_input(models_dir: Path, rel: str, make: Any) -> str:
    """The golden input `rel` under models_dir: kept if present, else copied from the shipped
    models (same bytes everywhere), else made."""
    dst = models_dir / rel
    if dst.exists():
        return rel
    src = SHIPPED / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.exists():
        shutil.copyfile(src, dst)
    else:
        _write_png(dst, make())
    return rel


def input_for(models_dir: Path, model: TFLiteModel, role: str, template: ChipTemplate | None) -> str:
    size = int(model.input_shape[1])
    if role == "detector":
        return ensure_input(models_dir, detector_input_name(size), lambda: make_detector_input(size))
    if role == "embedder":
        t = template or ChipTemplate.DLIB150
        return ensure_input(models_dir, chip_name(t, size), lambda: make_chip(t, size))
    if role == "landmarks":
        return ensure_input(models_dir, mesh_crop_name(), make_mesh_crop)
    raise InputError(f"{model.id}: no golden input for role {role!r}")


def record_entry(models_dir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Add (or refresh) the entry's `golden` block from the model file in models_dir.

    A cohort is data, not a network: `models verify` checks its shape and finiteness instead."""
    from edge.core.inference import ModelEntry

    if entry["role"] == "cohort":
        return entry

    me = ModelEntry(entry["id"], entry["file"], entry["sha256"], entry["role"], entry["precision"], entry)
    model = TFLiteModel(models_dir / entry["file"], num_threads=2, model_id=entry["id"], entry=me)
    template = ChipTemplate(entry["template"]) if "template" in entry else None
    rel = input_for(models_dir, model, entry["role"], template)
    entry["golden"] = golden.record(model, entry["role"], models_dir, rel)
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=SHIPPED)
    ap.add_argument("--inputs", action="store_true", help="remake the golden/ images first")
    args = ap.parse_args(argv)
    mdir: Path = args.models_dir
    if args.inputs:
        for size in (128, 192):
            _write_png(mdir / detector_input_name(size), make_detector_input(size))
        for t, s in ((ChipTemplate.DLIB150, 150), (ChipTemplate.ARCFACE112, 112)):
            _write_png(mdir / chip_name(t, s), make_chip(t, s))
        _write_png(mdir / mesh_crop_name(), make_mesh_crop())
    path = mdir / "MANIFEST.json"
    data = json.loads(path.read_text())
    load_manifest(mdir)  # validates
    for entry in data["models"]:
        record_entry(mdir, entry)
        print(f"[golden] {entry['id']}: {entry['golden']['input']}")
    path.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
