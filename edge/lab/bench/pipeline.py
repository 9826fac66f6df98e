"""`lfr-edge bench pipeline --source FILE`: the camera loop's speed, stage by stage, and a peer.

Runs the real loop (grabber thread, detector, aligner, quality gate, tracker, embedder, matcher)
over a replay and reports per-stage median/p95 ms, end-to-end frames/s and faces/s, the share
of frame time spent outside model invokes (the part tiling, pre/post-processing and Python
decide), and peak RSS. `--peer face_recognition` runs that library (dlib HOG detector + the same
ResNet weights) on the same frames in the same process, and reports both fps, their ratio and
how often the two agree on who is who. The peer is a bench-only optional dependency.
"""

from __future__ import annotations

import argparse


def register_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("pipeline", help="camera loop: per-stage ms, end-to-end fps, optional face_recognition peer")
    p.add_argument("--source", required=True, help="video file or folder of frames (PATH, file:PATH or dir:PATH)")
    p.add_argument("--config", help="config file (models, detection, quality, tracking, matching sections)")
    p.add_argument("--frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--enrol", help="folder of <subject>/<image> used to build the watchlist (needed for agreement)")
    p.add_argument("--threshold", type=float, default=None, help="override matching.threshold")
    p.add_argument("--detector", help="override models.detector id")
    p.add_argument("--embedder", help="override models.embedder id")
    p.add_argument("--peer", choices=["face_recognition"], help="also run this peer on the same frames")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout, no progress")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    # Models, OpenCV and the peer load only when the benchmark runs, not on every CLI start.
    from edge.lab.bench.pipeline_run import bench

    return bench(args)
