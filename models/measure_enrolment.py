"""Measure the enrolment consistency figure of each dlib embedder; optionally write it to MANIFEST.json.

    python models/measure_enrolment.py [--faces DIR] [--percentile 1] [--write]

`lfr-edge watchlist build` flags an image of a subject whose best cosine to the subject's other
images is below the embedder's `enrolment.consistency_min_cosine`. The figure is the given percentile
(default: the 1st) of the cosines of the LFW developer split's genuine pairs: every same-person pair
of the official lists (pairs_10fold, pairs_devtrain, pairs_devtest; duplicates counted once), each
image judged exactly as enrolment judges it (whole-frame detection, the primary-face rule, the
device's quality gate, the embedder under test); pairs with a refused image are left out, because
enrolment never compares a refused image. The different-person pairs of the same lists say how many
wrong photos the figure would catch. --write adds or replaces the `enrolment` key of the dlib
embedder entries and leaves the rest of the manifest as it is. models/build.py writes fresh entries,
so run this again after rebuilding an embedder (until then enrolment warns that it cannot cross-check).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: import edge.* from this checkout

from edge.backoffice.enrolment.image import ImageStatus, analyzer_adapter  # noqa: E402
from edge.core.config import Config  # noqa: E402
from edge.core.imageio import read_rgb  # noqa: E402
from edge.core.inference import MANIFEST_NAME, default_models_dir  # noqa: E402
from edge.core.vision.analyze import FaceAnalyzer  # noqa: E402

EMBEDDERS = ("dlib_resnet_v1_int8", "dlib_resnet_v1_fp32")
PAIR_FILES = ("pairs_10fold.csv", "pairs_devtrain.csv", "pairs_devtest.csv")


def read_pairs(lfw: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(genuine, impostor) pairs of image paths relative to lfw/, each pair once."""
    same: set[tuple[str, str]] = set()
    diff: set[tuple[str, str]] = set()
    for name in PAIR_FILES:
        with (lfw / name).open() as f:
            for row in csv.DictReader(f):
                a, b = sorted((row["path_a"], row["path_b"]))
                if a != b:
                    (same if row["is_same"] == "1" else diff).add((a, b))
    return sorted(same), sorted(diff)


def embed_all(lfw: Path, images: list[str], embedder: str) -> dict[str, np.ndarray[Any, Any]]:
    analyse = analyzer_adapter(FaceAnalyzer.from_config(Config(), embedder_id=embedder, whole_frame_only=True))
    out = {}
    statuses: Counter[str] = Counter()
    for n, rel in enumerate(images, 1):
        verdict = analyse(read_rgb(lfw / rel))
        statuses[verdict.status.value + (" (background face ignored)" if verdict.warnings else "")] += 1
        if verdict.status is ImageStatus.OK and verdict.embedding is not None:
            out[rel] = verdict.embedding
        if n % 500 == 0:
            print(f"  {embedder}: {n}/{len(images)} images", file=sys.stderr)
    print(f"{embedder}: images by status: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    return out


def cosines(emb: dict[str, np.ndarray[Any, Any]], pairs: list[tuple[str, str]]) -> np.ndarray[Any, Any]:
    kept = [(a, b) for a, b in pairs if a in emb and b in emb]
    if not kept:
        return np.zeros(0, np.float64)
    ea = np.stack([emb[a] for a, _ in kept]).astype(np.float64)
    eb = np.stack([emb[b] for _, b in kept]).astype(np.float64)
    return np.asarray(np.sum(ea * eb, axis=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "data" / "faces")
    ap.add_argument("--percentile", type=float, default=1.0, help="of the genuine cosines (default 1)")
    ap.add_argument("--embedder", choices=EMBEDDERS, action="append", help="measure only this one (repeatable)")
    ap.add_argument("--write", action="store_true", help=f"write the figures into models/{MANIFEST_NAME}")
    args = ap.parse_args(argv)
    lfw = args.faces / "lfw"
    genuine, impostor = read_pairs(lfw)
    images = sorted({p for pair in (*genuine, *impostor) for p in pair})
    figures: dict[str, dict[str, Any]] = {}
    for embedder in args.embedder or EMBEDDERS:
        emb = embed_all(lfw, images, embedder)
        g, i = cosines(emb, genuine), cosines(emb, impostor)
        x = round(float(np.percentile(g, args.percentile)), 4)
        print(
            f"{embedder}: {len(emb)}/{len(images)} images usable; {g.size}/{len(genuine)} genuine pairs, "
            f"{i.size}/{len(impostor)} impostor pairs; consistency_min_cosine = {x:.4f} "
            f"(genuine below: {np.mean(g < x):.1%}; impostor below, i.e. a wrong photo caught: {np.mean(i < x):.1%}; "
            f"genuine median {np.median(g):.4f}, impostor median {np.median(i):.4f})"
        )
        figures[embedder] = {
            "consistency_min_cosine": x,
            "measured": (
                f"percentile {args.percentile:g} of the cosines of {g.size} LFW developer-split genuine pairs "
                f"(official pair lists, both images usable by enrolment); catches {np.mean(i < x):.1%} of "
                f"{i.size} impostor pairs; python models/measure_enrolment.py --write"
            ),
        }
    if args.write:
        path = default_models_dir() / MANIFEST_NAME
        manifest = json.loads(path.read_text())
        for entry in manifest["models"]:
            if entry["id"] in figures:
                entry["enrolment"] = figures[entry["id"]]
        path.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"wrote the enrolment figures into {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
