"""Small-face recall per tile grid, for choosing `detection.tiles` (a repo-checkout tool, not a CLI command).

    python -m edge.lab.bench.pipeline_grids --size 1280x720 --grids 2x1:0.2,3x2:0.25,4x2:0.25 [--frames 48]

Pastes real LFW faces at known widths (32-160 px) on blurred multi-face backgrounds with the
detector build's own generator (`models.build_detector.small_face_frames`, read in place from the
face data) and prints, per grid, the share of faces found at each width (IoU >= 0.4) and the
detect() time per frame, as JSON lines. The camera loop's frames/s for a grid comes from
`lfr-edge bench pipeline` with the same grid in a config file. `--detect-module FILE` loads
FaceDetector from another copy of detect.py (e.g. an older commit) to compare pre-processing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from edge.core.errors import InputError
from edge.core.inference import load_model


def _grids(spec: str) -> list[tuple[int, int, float, bool]]:
    """'3x2:0.25,5x3:0.25:nowhole' → (cols, rows, overlap, whole_frame) tuples."""
    out = []
    for item in spec.split(","):
        parts = item.split(":")
        try:
            cols, rows = (int(v) for v in parts[0].lower().split("x"))
            overlap = float(parts[1]) if len(parts) > 1 else 0.25
        except ValueError as e:
            raise InputError(f"--grids {item!r}: expected COLSxROWS[:OVERLAP][:nowhole]") from e
        out.append((cols, rows, overlap, not (len(parts) > 2 and parts[2] == "nowhole")))
    return out


def _detector_class(path: str | None) -> Any:
    if path is None:
        from edge.core.vision.detect import FaceDetector

        return FaceDetector
    spec = importlib.util.spec_from_file_location("detect_under_test", path)
    if spec is None or spec.loader is None:
        raise InputError(f"--detect-module {path}: not a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod.FaceDetector


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--size", default="1280x720", help="frame WIDTHxHEIGHT")
    ap.add_argument("--grids", default="2x1:0.2,3x2:0.25,4x2:0.25,5x3:0.25")
    ap.add_argument("--frames", type=int, default=48, help="synthetic frames (one face per width each)")
    ap.add_argument("--detector", default="blazeface_full_range_int8", help="manifest model id")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--faces", default="/work/shared/data/faces", help="public face data (LFW layout)")
    ap.add_argument("--detect-module", help="path of another detect.py to take FaceDetector from")
    args = ap.parse_args(argv)
    try:
        # models/ is the build tooling of a repo checkout, not part of the installed package.
        bd: Any = importlib.import_module("models.build_detector")
    except ImportError as e:
        raise InputError(f"models.build_detector not importable ({e}); run from the repo root") from e
    if not Path(args.faces, "lfw").is_dir():
        raise InputError(f"--faces {args.faces}: no lfw/ folder (public face data)")
    width, height = (int(v) for v in args.size.lower().split("x"))
    frames = bd.small_face_frames(Path(args.faces), (width, height), args.frames)
    cls = _detector_class(args.detect_module)
    model = load_model(args.detector, None, num_threads=args.threads)
    for cols, rows, overlap, whole in _grids(args.grids):
        det = cls(model, tiles=(cols, rows, overlap), whole_frame=whole)
        det.detect(frames[0][0])  # plan + warm-up outside the timing
        t0 = time.perf_counter()
        recall = bd.small_face_recall(det, frames)
        ms = (time.perf_counter() - t0) * 1e3 / len(frames)
        row = {
            "size": args.size, "grid": f"{cols}x{rows}:{overlap}", "whole_frame": whole, "views": len(det._views),
            "detector": args.detector, "module": args.detect_module or "edge.core.vision.detect",
            "recall_pct": recall, "detect_ms_per_frame": round(ms, 1), "frames": len(frames),
        }  # fmt: skip
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
